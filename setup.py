"""Installs autoseg; the four stage folders become ``autoseg.planners`` etc."""
from setuptools import setup

STAGES = ("planners", "preprocess", "inference", "postprocess")

setup(
    name="autoseg",
    version="0.1.0",
    description="Self-configuring medical image segmentation (nnU-Net style), fast on CPU and GPU",
    python_requires=">=3.10",
    packages=["autoseg", "autoseg.training"] + [f"autoseg.{s}" for s in STAGES],
    package_dir={"autoseg": "autoseg", **{f"autoseg.{s}": s for s in STAGES}},
    package_data={"autoseg": ["demo_data/Task04_Hippocampus/*.*", "demo_data/Task04_Hippocampus/*/*.nii.gz"]},
    install_requires=[
        "torch>=2.1",
        "SimpleITK>=2.2",
        "pillow>=9.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "batchgenerators>=0.25",
        "scikit-image>=0.21",
        "acvl-utils>=0.2",
        "blosc2>=2.0",
        "tqdm>=4.60",
        "matplotlib>=3.6",
        "onnxruntime>=1.17",
        "onnx>=1.15",
    ],
    extras_require={"test": ["pytest>=7"]},
    entry_points={"console_scripts": ["autoseg=autoseg.cli:run"]},
)
