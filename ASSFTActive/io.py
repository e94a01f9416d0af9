"""Read and write 3D volumes (NIfTI, NRRD, MetaImage) with their RAS geometry, and check label files against images.

Conventions (used everywhere in the engine):
    * ``Volume.array`` is indexed ``[i, j, k]`` (voxel order of the file, as nibabel returns it; the MRML logic
      transposes Slicer's ``[k, j, i]`` arrays).
    * ``Volume.affine`` maps homogeneous voxel indices ``(i, j, k, 1)`` to RAS millimetres.

NRRD and MetaImage store LPS geometry; they are converted to RAS on read and back to LPS on write. Every writer is
atomic: data go to a temporary file in the target folder, then the file is renamed into place, so a reader never
sees a half-written file.

Two rules for what is read (both in one place, :func:`read_volume`; the README's refusal table names them):

* **Geometry is ITK's (Slicer's).** Every format's voxel-to-world matrix is the one ITK reads, because Slicer reads
  with ITK and every file ASSFT writes is displayed there. For NIfTI, nibabel and ITK disagree on headers a user
  does meet: a sheared (non-orthogonal) sform (ITK falls back to the qform, or refuses when there is none), a
  negative ``pixdim`` (nibabel takes its absolute value, ITK flips the axis), the qform/sform preference when both
  are set with different codes, and a header with neither. NIfTI voxels are read by nibabel (streamed, CRC-checked)
  and their geometry by ITK's header reader (:func:`itk_geometry`); a geometry ITK refuses is refused here with
  ITK's reason.
* **Declared sizes are checked before anything is allocated** (:func:`check_declared_size`): the voxel bytes the
  header declares must fit the limit of :data:`MAX_IMAGE_MB_ENV` (default :data:`DEFAULT_MAX_IMAGE_MB` MiB) and,
  for NIfTI, the file that holds them (a ``.nii`` must be that long; a ``.nii.gz`` cannot decompress to more than
  :data:`MAX_DEFLATE_RATIO` times its size, and its gzip trailer records the length). A 1 KB file declaring
  2 GB and a gzip bomb above the limit are refused before their voxels exist. Reading a ``.nii.gz`` needs the
  voxel array plus one 1 MiB piece.
"""

from __future__ import annotations

import glob
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np

from .errors import InputError, OutputError

PathLike = Union[str, "os.PathLike[str]"]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
ITK_SUFFIXES = (".seg.nrrd", ".nrrd", ".nhdr", ".mha", ".mhd")
SUPPORTED_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES

#: Largest allowed difference between the affine entries of an image and its label (mm), see
#: :func:`check_same_geometry`.
GEOMETRY_TOLERANCE_MM = 1e-3

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: Environment variable: the largest image (voxel bytes as stored, after decompression) ASSFT reads, in MiB.
MAX_IMAGE_MB_ENV = "ASSFT_MAX_IMAGE_MB"
#: Its default: 1 GiB holds a 512 x 512 x 1024 CT as int16 twice over, or as float32 once. Processing an image costs
#: a few times its size (preprocessing, probabilities, overlays), so larger inputs need a deliberate choice.
DEFAULT_MAX_IMAGE_MB = 1024
#: DEFLATE's largest compression ratio (258-byte matches coded in about 2 bits): no gzip stream decompresses to more
#: than this many times its own size (plus a little for headers).
MAX_DEFLATE_RATIO = 1032


@dataclass(frozen=True)
class Volume:
    """One 3D volume and where it lies in patient space.

    Attributes:
        array: voxel values ``[I, J, K]`` (or ``[I, J, K, C]`` when channels were allowed on read).
        affine: ``[4, 4]`` float64 matrix from voxel index ``(i, j, k, 1)`` to RAS millimetres.
        path: the file it was read from, if any.
    """

    array: np.ndarray
    affine: np.ndarray
    path: Optional[Path] = None

    @property
    def shape(self) -> tuple:
        return tuple(self.array.shape[:3])

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k: ``[3]``."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def name(self) -> str:
        return case_id(self.path) if self.path is not None else "volume"

    def with_array(self, array: np.ndarray) -> Volume:
        """The same geometry holding other voxel values (e.g. a label map or an entropy map)."""
        if tuple(array.shape[:3]) != self.shape:
            raise ValueError(f"array shape {array.shape} does not match volume shape {self.shape}")
        return Volume(array=array, affine=self.affine.copy(), path=None)


def case_id(path: PathLike) -> str:
    """File name without its image suffix: ``/a/hippocampus_001.nii.gz`` -> ``hippocampus_001``."""
    name = Path(path).name
    for suffix in SUPPORTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _suffix(path: Path) -> str:
    lower = path.name.lower()
    for suffix in SUPPORTED_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise InputError(
        f"{path}: unsupported file type. ASSFT reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .seg.nrrd) and "
        "MetaImage (.mha, .mhd); convert the file to one of these."
    )


def _not_a_file(path: Path) -> str:
    """What ``path``, not a regular file nor a link to one, is instead: ``"is a folder, not an image file"``,
    ``"is a link that leads to no file (...)"`` or ``"was not found"``."""
    if path.is_dir():
        return "is a folder, not an image file"
    if path.is_symlink():
        return "is a link that leads to no file (its target is missing or the links form a loop)"
    return "was not found"


def _unreadable(path: Path) -> InputError:
    """The refusal of a file this user may not read: a permission problem, not a corrupt file."""
    return InputError(
        f"{path}: cannot be read: permission denied for this user (the file itself is not known to be damaged). "
        "Make it readable (e.g. chmod a+r) or run as a user who may read it."
    )


def read_volume(path: PathLike, *, allow_channels: bool = False) -> Volume:
    """Read a 3D volume with its RAS affine.

    Args:
        path: a NIfTI, NRRD or MetaImage file.
        allow_channels: accept a 4D file ``[I, J, K, C]`` (only for models whose card declares channels).

    Raises:
        InputError: missing, unreadable or corrupt file (a folder, a broken link and a file this user may not read
            are each named as such, not as corrupt); a declared size beyond the limit or the file
            (:func:`check_declared_size`); a geometry ITK cannot read (:func:`itk_geometry`); not 3D; NaN or
            infinite voxels.
    """
    path = Path(path)
    if not path.is_file():
        what = _not_a_file(path)
        if what == "was not found":
            raise InputError(f"{path}: file not found. Check the path or the --images/--labels argument.")
        raise InputError(f"{path}: {what}. Pass an image file (NIfTI, NRRD or MetaImage) or fix the link.")
    suffix = _suffix(path)
    try:
        if suffix in NIFTI_SUFFIXES:
            array, affine = _read_nifti(path)
        else:
            array, affine = _read_itk(path)
    except InputError:
        raise
    except PermissionError as exc:
        raise _unreadable(path) from exc
    except Exception as exc:  # any other reader failure means a corrupt or truncated file
        raise InputError(
            f"{path}: cannot read the file ({type(exc).__name__}: {exc}). It may be truncated or corrupt; "
            "re-export it from the scanner or viewer."
        ) from exc

    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim < 3:
        raise InputError(
            f"{path}: the image is {array.ndim}D with shape {array.shape}; ASSFT needs a 3D volume. "
            "Stack the slices into one 3D file."
        )
    if array.ndim > 3 and not (allow_channels and array.ndim == 4):
        raise InputError(
            f"{path}: the image is {array.ndim}D with shape {array.shape}; ASSFT needs a single 3D volume "
            "(a time series or multi-channel file needs a model card that declares channels). Split it into 3D files."
        )
    if np.issubdtype(array.dtype, np.floating):
        bad = _count_non_finite(array)
        if bad:
            raise InputError(
                f"{path}: {bad} voxels are NaN or infinite. Fix or mask them before ranking (e.g. replace with 0)."
            )
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{path}: the voxel-to-world matrix is invalid (singular or not finite). Fix the header.")
    return Volume(array=np.asarray(array), affine=affine, path=path)


#: Voxels converted or reduced at a time when a volume is walked in slabs (16 MiB as float32): no full-size float
#: copy or mask of a CT-sized input is ever made.
SLAB_VOXELS = 1 << 22


def slab_rows(shape: Sequence[int], voxels: int) -> int:
    """Rows along axis 0 of a ``shape`` array that hold at most ``voxels`` voxels (at least one row)."""
    return max(1, voxels // max(1, int(np.prod(shape[1:]))))


def storage_slabs(array: np.ndarray, voxels: int = SLAB_VOXELS) -> Iterator[np.ndarray]:
    """Views of ``array`` in slabs of at most ``voxels`` voxels along the axis it is stored slowest on.

    Each slab is one contiguous block of memory (or of a memory-mapped file), so a whole-volume reduction done slab
    by slab reads the data in order and needs extra memory for one slab only.
    """
    array = np.asarray(array)
    array = np.moveaxis(array, int(np.argmax(np.abs(array.strides))), 0)
    rows = slab_rows(array.shape, voxels)
    for first in range(0, array.shape[0], rows):
        yield array[first : first + rows]


def _count_non_finite(array: np.ndarray, voxels: int = SLAB_VOXELS) -> int:
    """NaN and infinite voxels of ``array``, counted slab by slab (no full-size mask)."""
    return sum(int(slab.size - np.count_nonzero(np.isfinite(slab))) for slab in storage_slabs(array, voxels))


def _read_nifti(path: Path):
    """Voxels and affine of a NIfTI-1/2 file.

    A ``.nii`` is memory-mapped (nibabel's default), so its voxels are read from disk as they are used. A ``.nii.gz``
    is decompressed as a stream straight into the voxel array, then read to its end: nibabel reads a gzip stream
    only as far as the voxels reach, so the gzip CRC-32 and length trailer, the only check that the bytes are the
    ones written, would never be looked at, and a corrupted block inside a ``.nii.gz`` would decode to plausible
    wrong voxels. The peak memory is the voxel array itself (no second copy of the decompressed bytes).
    """
    import gzip
    import zlib

    import nibabel as nib
    from nibabel.fileholders import FileHolder

    if not path.name.lower().endswith(".nii.gz"):
        image = nib.load(str(path))
        header = image.header
        check_declared_size(
            path,
            header.get_data_shape(),
            header.get_data_dtype().itemsize,
            stored=path.stat().st_size - int(header.get_data_offset()),
        )
        return np.asanyarray(image.dataobj), itk_geometry(path, header)
    try:
        with gzip.open(path, "rb") as stream:
            nifti = _nifti_class(stream.read(4), path)
            stream.seek(0)
            header = nifti.header_class.from_fileobj(stream)
            _check_gzip_size(path, header)
            stream.seek(0)
            holder = FileHolder(fileobj=_ChunkedReader(stream))
            image = nifti.from_file_map({"header": holder, "image": holder}, mmap=False)
            array = np.asanyarray(image.dataobj)
            while stream.read(1 << 20):  # to the trailer: gzip checks the CRC-32 and length there
                pass
    except PermissionError as exc:  # an OSError too, but nothing is wrong with the data
        raise _unreadable(path) from exc
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise InputError(
            f"{path}: cannot read the file: its compressed data are corrupt or truncated ({exc}), so the voxels cannot "
            "be trusted. Copy or export the file again."
        ) from exc
    return array, itk_geometry(path, header)


def max_image_bytes() -> int:
    """The limit on an image's voxel bytes: :data:`MAX_IMAGE_MB_ENV` MiB, default :data:`DEFAULT_MAX_IMAGE_MB`.

    Raises:
        InputError: the variable is set to something other than a positive number.
    """
    text = os.environ.get(MAX_IMAGE_MB_ENV, "").strip()
    if not text:
        return DEFAULT_MAX_IMAGE_MB << 20
    try:
        megabytes = float(text)
    except ValueError:
        megabytes = float("nan")
    if not megabytes > 0 or megabytes == float("inf"):
        raise InputError(
            f"{MAX_IMAGE_MB_ENV}={text!r}: the image size limit must be a positive number of MiB "
            f"(default {DEFAULT_MAX_IMAGE_MB})."
        )
    return int(megabytes * (1 << 20))


def check_declared_size(
    path: Path, shape: Sequence[int], itemsize: int, *, stored: Optional[int] = None, most: Optional[int] = None
) -> int:
    """Refuse an image whose header declares more voxel bytes than the limit or than its file can hold.

    Args:
        path: the file (for the message).
        shape, itemsize: the header's dimensions and bytes per voxel value.
        stored: bytes of voxel data the file holds (uncompressed files), if known.
        most: the most voxel bytes the file could hold (compressed files), if known.

    Returns:
        the declared voxel bytes.

    Raises:
        InputError: beyond the limit (the message names :data:`MAX_IMAGE_MB_ENV`), or beyond the file.
    """
    declared = int(itemsize)
    for edge in shape:
        declared *= max(int(edge), 0)
    limit = max_image_bytes()
    dims = "×".join(str(int(e)) for e in shape)
    if declared > limit:
        raise InputError(
            f"{path}: the header declares {dims} voxels of {itemsize} byte(s), {declared / (1 << 20):.0f} MiB, more "
            f"than the limit of {limit / (1 << 20):.0f} MiB. If the image is real, raise the limit with the "
            f"environment variable {MAX_IMAGE_MB_ENV} (in MiB); otherwise the header is damaged or the file is a "
            "decompression bomb."
        )
    short = (
        stored if stored is not None and stored < declared else most if most is not None and most < declared else None
    )
    if short is not None:
        raise InputError(
            f"{path}: the header declares {dims} voxels ({declared} bytes), but the file can hold at most "
            f"{max(short, 0)} bytes of them; the file is truncated or its header is damaged. Export it again."
        )
    return declared


def _check_gzip_size(path: Path, header) -> None:
    """:func:`check_declared_size` of a ``.nii.gz`` from its header, before its voxels are decompressed.

    The decompressed length ``L`` is at most :data:`MAX_DEFLATE_RATIO` times the compressed size, and the gzip
    trailer stores ``L mod 2**32``; the largest ``L`` that fits both bounds what the file can hold. A file with
    several gzip members records only its last member's length, so a shortfall is confirmed by decompressing into
    nothing (bounded memory) before the file is refused.
    """
    import gzip

    offset = int(header.get_data_offset())
    shape, itemsize = header.get_data_shape(), header.get_data_dtype().itemsize
    compressed = path.stat().st_size
    bound = MAX_DEFLATE_RATIO * compressed + (1 << 16)
    with open(path, "rb") as raw:
        raw.seek(max(compressed - 4, 0))
        recorded = int.from_bytes(raw.read(4), "little")
    most = recorded + ((bound - recorded) >> 32 << 32) if bound >= recorded else bound
    try:
        check_declared_size(path, shape, itemsize, most=most - offset)
    except InputError:
        if max_image_bytes() < int(np.prod([max(int(e), 0) for e in shape], dtype=np.float64)) * itemsize:
            raise  # beyond the limit: no need to look further
        length = 0
        with gzip.open(path, "rb") as stream:
            while True:
                piece = stream.read(1 << 20)
                if not piece:
                    break
                length += len(piece)
        check_declared_size(path, shape, itemsize, stored=length - offset)


def itk_geometry(path: Path, header=None) -> np.ndarray:
    """The RAS voxel-to-world matrix ``[4, 4]`` that ITK (Slicer's reader) gives the file's header.

    Only the header is read. ITK's own warnings (e.g. "unexpected scales in sform") are not printed: what matters
    is the geometry it settles on, and a geometry it refuses is refused here. A NIfTI-2 header (which this ITK has
    no reader for) is handed to ITK as the equivalent NIfTI-1 header.

    Args:
        header: the file's nibabel header (used for NIfTI-2).

    Raises:
        InputError: ITK cannot read a geometry from the header (e.g. a sheared sform and no qform).
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    shown = sitk.ProcessObject_GetGlobalWarningDisplay()
    sitk.ProcessObject_SetGlobalWarningDisplay(False)
    try:
        if header is not None and header.sizeof_hdr == 540:
            with tempfile.TemporaryDirectory(prefix="assft-header-") as folder:
                import nibabel as nib

                copy = Path(folder) / "header.nii"
                copy.write_bytes(nib.Nifti1Header.from_header(header).binaryblock + b"\0" * 4)
                reader.SetFileName(str(copy))
                reader.ReadImageInformation()
        else:
            reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[-1].replace("ITK ERROR: ", "")
        advice = (
            "The header is sheared (non-orthogonal) without an orthogonal alternative; resample the image onto "
            "an orthogonal grid (e.g. in Slicer or with ITK) and export it again."
            if "orthonormal" in reason
            else "Slicer could not open it either; export it again from the scanner or viewer."
        )
        raise InputError(
            f"{path}: its voxel-to-world geometry cannot be read the way 3D Slicer (ITK) reads it: {reason} {advice}"
        ) from exc
    finally:
        sitk.ProcessObject_SetGlobalWarningDisplay(shown)
    dim = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    if dim < 3:
        return lps
    lps[:3, :3] = direction @ np.diag(reader.GetSpacing()[:3])
    lps[:3, 3] = reader.GetOrigin()[:3]
    return _LPS_TO_RAS @ lps


class _ChunkedReader(io.RawIOBase):
    """A read-only binary stream whose ``readinto`` fills the caller's buffer in 1 MiB pieces.

    ``GzipFile.readinto`` (``BufferedIOBase``'s) reads the whole request into a temporary ``bytes`` and copies it,
    which doubles the peak memory of a volume read into its array; reading piece by piece keeps the extra memory at
    one piece.
    """

    CHUNK = 1 << 20

    def __init__(self, stream):
        super().__init__()
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        filled = 0
        while filled < len(view):
            piece = self._stream.read(min(self.CHUNK, len(view) - filled))
            if not piece:
                break
            view[filled : filled + len(piece)] = piece
            filled += len(piece)
        return filled

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def _nifti_class(magic: bytes, path: Path):
    """``Nifti1Image`` or ``Nifti2Image``, from the header size in the first four bytes."""
    import nibabel as nib

    size = magic[:4]
    if size in ((348).to_bytes(4, "little"), (348).to_bytes(4, "big")):
        return nib.Nifti1Image
    if size in ((540).to_bytes(4, "little"), (540).to_bytes(4, "big")):
        return nib.Nifti2Image
    raise InputError(
        f"{path}: cannot read the file: not a NIfTI file (the header size is neither 348 nor 540 "
        "bytes); it may be corrupt."
    )


class _ImageBuffer:
    """The voxels of a SimpleITK image, exposed to numpy while keeping the image (which owns the memory) alive.

    ``sitk.GetArrayFromImage`` copies the voxels, so reading a volume needed twice its size; a view of the image's
    buffer needs it once, as long as the image outlives every view. An array made from this object has it as its
    base (numpy does not collapse a base chain past an object that is not an array), so every view and transpose
    keeps the image alive.
    """

    def __init__(self, view: np.ndarray, image) -> None:
        interface = dict(view.__array_interface__)
        interface["data"] = (interface["data"][0], False)  # writable, as a copy was: the image is this array's alone
        self.__array_interface__ = interface
        self._view, self._image = view, image

    @classmethod
    def wrap(cls, view: np.ndarray, image) -> np.ndarray:
        return np.asarray(cls(view, image))


def _read_itk(path: Path):
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    pixel = sitk.Image([1] * reader.GetDimension(), reader.GetPixelID(), reader.GetNumberOfComponents())
    check_declared_size(path, reader.GetSize(), reader.GetNumberOfComponents() * pixel.GetSizeOfPixelComponent())
    image = reader.Execute()
    array = _ImageBuffer.wrap(sitk.GetArrayViewFromImage(image), image)  # [k, j, i] or [k, j, i, c], no copy
    if image.GetNumberOfComponentsPerPixel() > 1:
        array = np.moveaxis(array, -1, 0)  # [c, k, j, i]
        array = np.transpose(array, tuple(range(array.ndim - 1, 0, -1)) + (0,))  # [i, j, k, c]
    else:
        array = np.transpose(array, tuple(range(array.ndim - 1, -1, -1)))
    dim = image.GetDimension()
    if dim != 3:
        return array, np.eye(4)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return array, _LPS_TO_RAS @ lps


def write_volume(volume: Volume, path: PathLike) -> Path:
    """Write ``volume`` atomically; the format follows the suffix of ``path``."""
    path = Path(path)
    suffix = _suffix(path)
    array = np.asarray(volume.array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)

    def write(tmp: Path) -> None:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            image = nib.Nifti1Image(array, volume.affine)
            image.set_qform(volume.affine, code=1)
            image.set_sform(volume.affine, code=1)
            nib.save(image, str(tmp))
        else:
            import SimpleITK as sitk

            image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 1, 0))))
            lps = _LPS_TO_RAS @ volume.affine
            spacing = np.linalg.norm(lps[:3, :3], axis=0)
            image.SetSpacing([float(s) for s in spacing])
            image.SetDirection([float(x) for x in (lps[:3, :3] / spacing).ravel()])
            image.SetOrigin([float(x) for x in lps[:3, 3]])
            sitk.WriteImage(image, str(tmp), True)

    _atomic(path, write, suffix)
    return path


def _atomic(path: Path, write, suffix: str) -> None:
    """Write through a temporary file in the target folder, then rename it into place.

    Below a confinement root (the worker's job folder, :mod:`ASSFTActive.confine`) the folder is reached without
    following any link, and the temporary file is created and renamed relative to it.

    Raises:
        OutputError: the folder cannot be created or written, or the disk is full (nothing is left behind).
    """
    from .confine import output_mode, write_confined

    try:
        if write_confined(path, write, suffix, output_mode()):
            return
    except OutputError:
        raise
    except OSError as exc:
        raise _output_error(path, exc) from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=str(path.parent))
    except OSError as exc:
        raise _output_error(path, exc) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, output_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _output_error(path, exc) from exc
        raise


def check_writable_folder(folder: PathLike, what: str) -> None:
    """Fail before any heavy work when files cannot be written into ``folder``; creates nothing.

    The nearest existing folder on the way to ``folder`` must be a folder in which a file can be created (a probe file
    is created and removed at once), so an unwritable output is refused before a training, not after it.

    Args:
        what: how the user names the folder (``--predictions``).

    Raises:
        OutputError: a path component is a file, or the folder cannot be written.
    """
    target = Path(folder)
    existing = target
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"{target}: the {what} cannot be created because {existing} is a file, not a folder. Choose another folder."
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=str(existing))
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(
            f"{target}: the {what} is not writable ({exc.strerror or exc} in {existing}). Choose another "
            "folder or fix its permissions."
        ) from exc


def _output_error(path: Path, exc: OSError) -> OutputError:
    return OutputError(
        f"{path}: cannot be written ({exc.strerror or exc}). Choose another output folder, fix its "
        "permissions or free disk space."
    )


def atomic_write_text(path: PathLike, text: str) -> Path:
    """Write text so that ``path`` holds either the old or the complete new content, never a part."""
    path = Path(path)
    _atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), ".txt")
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    path = Path(path)
    _atomic(path, lambda tmp: tmp.write_bytes(data), ".bin")
    return path


def check_same_geometry(image: Volume, label: Volume, tolerance_mm: float = GEOMETRY_TOLERANCE_MM) -> None:
    """Raise :class:`InputError` unless ``label`` lies on the voxel grid of ``image``.

    The shapes must be equal and every affine entry may differ by at most ``tolerance_mm``.
    """
    if image.shape != label.shape:
        raise InputError(
            f"{label.path}: label shape {label.shape} does not match image {image.path} shape {image.shape}. "
            "The label must be drawn on the same voxel grid; resample it onto the image."
        )
    difference = float(np.max(np.abs(image.affine - label.affine)))
    if difference > tolerance_mm:
        raise InputError(
            f"{label.path}: label geometry differs from image {image.path} (largest affine difference "
            f"{difference:.4g} mm > tolerance {tolerance_mm} mm). Resample the label onto the image grid."
        )


def read_label(path: PathLike, image: Volume, num_classes: int, tolerance_mm: float = GEOMETRY_TOLERANCE_MM) -> Volume:
    """Read a class-index label map on the grid of ``image`` and check it.

    Returns:
        a :class:`Volume` whose array is ``uint8``/``int16`` ``[I, J, K]`` with values in ``[0, num_classes)``.

    Raises:
        InputError: unreadable file, geometry mismatch, non-integer values, or classes the model does not have.
    """
    label = read_volume(path)
    check_same_geometry(image, label, tolerance_mm)
    values = label.array
    if np.issubdtype(values.dtype, np.floating):
        rounded = np.rint(values)
        if not np.array_equal(rounded, values):
            raise InputError(f"{label.path}: label values must be whole numbers (class indices); found fractions.")
        values = rounded
    present = np.unique(values)
    unknown = [int(v) for v in present if v < 0 or v >= num_classes]
    if unknown:
        raise InputError(
            f"{label.path}: label values {unknown} are not classes of the model (0..{num_classes - 1}). "
            "Relabel the file or choose a model card with these classes."
        )
    dtype = np.uint8 if num_classes <= 256 else np.int16
    return Volume(array=values.astype(dtype), affine=label.affine, path=label.path)


def find_images(spec: PathLike) -> List[Path]:
    """Image files named by a folder or a glob pattern, sorted by name.

    Raises:
        InputError: nothing matches; an entry named like an image is not a file (a folder, a dangling link or a link
            loop): it would otherwise be left out of the pool without a word.
    """
    text = str(spec)
    base = Path(text)
    candidates = list(base.iterdir()) if base.is_dir() else [Path(p) for p in glob.glob(text)]
    named = sorted(p for p in candidates if p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.startswith("."))
    odd = [p for p in named if not p.is_file()]
    if odd:
        more = f" ({len(odd) - 1} more such entries: {', '.join(p.name for p in odd[1:4])})" if len(odd) > 1 else ""
        raise InputError(
            f"{odd[0]}: named like an image but {_not_a_file(odd[0])}{more}, so it cannot be ranked or used. "
            "Move it out of the --images folder, or pass a glob that leaves it out."
        )
    files = named
    if not files:
        raise InputError(
            f"{text}: no NIfTI/NRRD/MetaImage files found. Pass a folder or a glob such as 'images/*.nii.gz'."
        )
    return files


def match_labels(
    images: Sequence[Path], labels_dir: Optional[PathLike], warn: Optional[Callable[[str], None]] = None
) -> Dict[str, Path]:
    """Label files in ``labels_dir`` whose case id equals an image's case id: ``{case_id: label_path}``.

    Args:
        warn: receives one sentence naming the label files that match no image (a typo in a file name, a label
            whose image was left out of ``--images``); they are never used, and the user should know.
    """
    if labels_dir is None:
        return {}
    folder = Path(labels_dir)
    if not folder.is_dir():
        raise InputError(f"{folder}: labels folder not found. Pass an existing folder to --labels.")
    by_id = {
        case_id(p): p
        for p in folder.iterdir()
        if p.name.lower().endswith(SUPPORTED_SUFFIXES) and not p.name.startswith(".")
    }
    wanted = {case_id(image) for image in images}
    orphans = sorted(name for name in by_id if name not in wanted)
    if orphans and warn is not None:
        shown = ", ".join(by_id[name].name for name in orphans[:8]) + (", ..." if len(orphans) > 8 else "")
        warn(
            f"{len(orphans)} label file(s) in {folder} match no image and are not used: {shown}. Name each label "
            "like its image, or add the image to --images."
        )
    return {case_id(image): by_id[case_id(image)] for image in images if case_id(image) in by_id}


#: Levels of a map in ``[0, 1]`` stored by :func:`write_unit_map` (uint8 with a NIfTI scale of ``1 / 255``).
UNIT_MAP_LEVELS = 255
#: The header stores the slope as float32; float32(1/255) * 255 exceeds 1, so take the float32 just below it.
_UNIT_SLOPE = float(np.nextafter(np.float32(1.0 / UNIT_MAP_LEVELS), np.float32(0.0)))


def unit_levels(values: np.ndarray) -> np.ndarray:
    """uint8 levels ``round(255 v)`` of a map with values in ``[0, 1]`` (clipped); uint8 input is returned as is."""
    array = np.asarray(values)
    if array.dtype == np.uint8:
        return array
    return np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * UNIT_MAP_LEVELS).astype(np.uint8)


def write_unit_map(volume: Volume, path: PathLike) -> Path:
    """Write a map with values in ``[0, 1]`` (entropy, confidence) as NIfTI uint8 with ``scl_slope = 1/255``.

    A quarter of float32's size (before compression) and readers that honour the NIfTI scale (Slicer, nibabel,
    :func:`read_volume`) see the values back to within ``1/510``. Values outside ``[0, 1]`` are clipped. A uint8
    array is taken as the levels ``round(255 v)`` already.
    """
    path = Path(path)
    if _suffix(path) not in NIFTI_SUFFIXES:
        raise ValueError(f"{path}: a unit map is written as NIfTI (.nii.gz or .nii)")
    levels = unit_levels(volume.array)

    def write(tmp: Path) -> None:
        import nibabel as nib

        image = nib.Nifti1Image(levels, volume.affine)
        image.header.set_slope_inter(_UNIT_SLOPE, 0.0)
        image.set_qform(volume.affine, code=1)
        image.set_sform(volume.affine, code=1)
        nib.save(image, str(tmp))

    _atomic(path, write, _suffix(path))
    return path
