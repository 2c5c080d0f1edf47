"""kyx: a JAX/Flax research codebase for large language models."""
from setuptools import find_packages, setup

setup(
    name="kyx",
    version="0.1.0",
    description="Pure-functional JAX/Flax LLM research codebase: pretraining, MoE, alignment, ExCP.",
    python_requires=">=3.11",
    packages=find_packages(include=["kyx", "kyx.*"]),
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml-collections>=1.1,<2",
        "sentencepiece>=0.2.1,<0.3",
        "grain>=0.2.18,<0.3",
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8.6,<0.9",
        "tensorboardX>=2.6.5,<3",
        "tqdm>=4.70,<5",
        "matplotlib>=3.11,<4",
        "numpy>=2.4,<3",
        "zstandard>=0.25,<1",
        "safetensors>=0.8,<1",
    ],
    extras_require={
        "test": [
            "pytest>=9.0,<10",
            "pytest-xdist>=3.8,<4",
            "torch==2.13.0",
            "transformers>=5.23,<6",
            "nbclient>=0.11,<1",
            "nbformat>=5.11,<6",
            "ipykernel>=7.4,<8",
        ],
    },
    entry_points={"console_scripts": ["kyx=kyx.cli:main"]},
)
