from setuptools import find_namespace_packages, setup

setup(
    name="dsrl",
    version="0.1.0",
    description="DSRL: steering frozen diffusion/flow policies (Pi0) by RL in latent-noise space",
    # Namespace discovery: the asset folders (data only, no __init__.py) count as packages too,
    # so setuptools does not warn, once per folder, that they would be ignored.
    packages=find_namespace_packages(include=["dsrl", "dsrl.*"]),
    package_data={"dsrl": ["assets/*", "assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.11",
)
