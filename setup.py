from setuptools import setup

setup(
    name="nnunet-sacl",
    version="0.1.0",
    description="Semantic-Aware Contrastive Learning (SACL) pretraining for nnU-Net v2",
    long_description=open("README.md").read() if __import__("os").path.isfile("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["nnunet_sacl", "nnunet_sacl.method", "nnunet_sacl.nnunet", "nnunet_sacl.dataset_conversion",
              "nnunet_sacl.analysis", "nnunet_sacl.cli", "nnunet_sacl.train", "nnunet_sacl.ext_trainers"],
    # a regular (non-editable) install ships trainers/ inside the package; see nnunet_sacl.trainers_folder()
    package_dir={"nnunet_sacl.ext_trainers": "trainers"},
    # monai: the surface-element NSD (evaluate/compare --nsd-method surface); it needs only torch and numpy
    install_requires=["torch>=2.1", "nnunetv2>=2.8.1,<2.9", "numpy", "SimpleITK", "batchgenerators", "scipy",
                      "matplotlib", "monai>=1.3"],
    extras_require={"test": ["pytest"]},
    entry_points={"console_scripts": ["nnunet-sacl=nnunet_sacl.cli:main"]},
)
