"""An nnU-Net v2 result folder as nnU-Net writes it, from a randomly initialised network: ``plans.json``,
``dataset.json`` and ``fold_0/checkpoint_final.pth`` with the keys and value types of
``nnUNetTrainer.save_checkpoint``. Shared by the nnU-Net source tests (a helpers module: no test imports another).

Needs ``dynamic-network-architectures`` (requirements.txt pins it); callers skip without it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from dynamic_network_architectures.architectures import unet

ARCH_KWARGS = {
    "n_stages": 3,
    "features_per_stage": [4, 8, 16],
    "conv_op": "torch.nn.modules.conv.Conv3d",
    "kernel_sizes": [[3, 3, 3], [3, 3, 3], [3, 3, 3]],
    "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
    "n_conv_per_stage": [2, 2, 2],
    "n_conv_per_stage_decoder": [2, 2],
    "conv_bias": True,
    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
    "norm_op_kwargs": {"eps": 1e-05, "affine": True},
    "dropout_op": None,
    "dropout_op_kwargs": None,
    "nonlin": "torch.nn.LeakyReLU",
    "nonlin_kwargs": {"inplace": True},
}

#: Per nnU-Net's SimpleITK axis order [z, y, x]: the synthetic volumes are 1 x 1 x 1.5 mm in [i, j, k].
PLANS = {
    "dataset_name": "Dataset004_Hippocampus",
    "plans_name": "nnUNetPlans",
    "original_median_spacing_after_transp": [1.5, 1.0, 1.0],
    "original_median_shape_after_transp": [20, 24, 24],
    "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2],
    "transpose_backward": [0, 1, 2],
    "configurations": {
        "2d": {
            "data_identifier": "nnUNetPlans_2d",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 366,
            "patch_size": [24, 24],
            "median_image_size_in_voxels": [24.0, 24.0],
            "spacing": [1.0, 1.0],
            "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": {
                    **ARCH_KWARGS,
                    "conv_op": "torch.nn.modules.conv.Conv2d",
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "kernel_sizes": [[3, 3]] * 3,
                    "strides": [[1, 1], [2, 2], [2, 2]],
                },
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
            "batch_dice": True,
        },
        "3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres",
            "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 9,
            "patch_size": [12, 16, 20],
            "median_image_size_in_voxels": [20.0, 24.0, 24.0],
            "spacing": [1.5, 1.0, 1.0],
            "normalization_schemes": ["CTNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
            "architecture": {
                "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                "arch_kwargs": ARCH_KWARGS,
                "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
            },
            "batch_dice": False,
        },
    },
    "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {
        "0": {
            "max": 540.0,
            "mean": 400.0,
            "median": 405.0,
            "min": 250.0,
            "percentile_00_5": 280.0,
            "percentile_99_5": 520.0,
            "std": 100.0,
        }
    },
}

DATASET = {
    "channel_names": {"0": "CT"},
    "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
    "numTraining": 3,
    "file_ending": ".nii.gz",
    "name": "Hippocampus",
    "description": "synthetic two-box volumes written by the test",
}


def nnunet_network(arch_kwargs=ARCH_KWARGS, classes: int = 3) -> torch.nn.Module:
    """The network as nnU-Net's trainer builds it (deep supervision on), straight from the package."""
    ops = {
        "conv_op": torch.nn.Conv3d,
        "norm_op": torch.nn.InstanceNorm3d,
        "nonlin": torch.nn.LeakyReLU,
        "dropout_op": None,
    }
    return unet.PlainConvUNet(input_channels=1, num_classes=classes, deep_supervision=True, **{**arch_kwargs, **ops})


def write_checkpoint(path: Path, network: torch.nn.Module, plans=PLANS, dataset=DATASET, mirror_axes=(0, 1, 2)) -> Path:
    """A checkpoint with the keys and value types of ``nnUNetTrainer.save_checkpoint``."""
    optimizer = torch.optim.SGD(network.parameters(), lr=0.01, momentum=0.99, nesterov=True)
    network(torch.zeros(1, 1, 12, 16, 20))[0].sum().backward()
    optimizer.step()
    checkpoint = {
        "network_weights": network.state_dict(),
        "optimizer_state": optimizer.state_dict(),
        "grad_scaler_state": None,
        "logging": {
            "mean_fg_dice": [np.float64(0.41)],
            "ema_fg_dice": [np.float64(0.41)],
            "dice_per_class_or_region": [[np.float64(0.35), np.float64(0.47)]],
            "train_losses": [np.float32(-0.25)],
            "val_losses": [np.float32(-0.21)],
            "lrs": [0.01],
            "epoch_start_timestamps": [1.7e9],
            "epoch_end_timestamps": [1.7e9 + 30.0],
        },
        "_best_ema": np.float64(0.41),
        "current_epoch": 1,
        "init_args": {
            "plans": plans,
            "configuration": "3d_fullres",
            "fold": 0,
            "dataset_json": dataset,
            "device": torch.device("cpu"),
        },
        "trainer_name": "nnUNetTrainer",
        "inference_allowed_mirroring_axes": mirror_axes,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return path


def write_nnunet_folder(root: Path, plans=PLANS, dataset=DATASET, seed: int = 0, mirror_axes=(0, 1, 2)) -> Path:
    """``<root>/Dataset004_Hippocampus/nnUNetTrainer__nnUNetPlans__3d_fullres`` with fold_0 trained."""
    folder = root / "Dataset004_Hippocampus" / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans, indent=4))
    (folder / "dataset.json").write_text(json.dumps(dataset, indent=4))
    torch.manual_seed(seed)
    write_checkpoint(folder / "fold_0" / "checkpoint_final.pth", nnunet_network(), mirror_axes=mirror_axes)
    return folder
