from setuptools import find_packages, setup

setup(
    name="dsrl",
    version="0.1.0",
    description="DSRL: steering frozen diffusion/flow policies (Pi0) by RL in latent-noise space",
    packages=find_packages(include=["dsrl", "dsrl.*"]),
    package_data={"dsrl": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.11",
)
