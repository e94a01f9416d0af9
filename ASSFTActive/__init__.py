"""ASSFT engine: adapt a pre-trained 3D segmentation model to a new site with few expert labels.

Pure Python on torch, MONAI and numpy. Never imports slicer, qt, vtk or trame.
"""

__version__ = "0.1.0"
