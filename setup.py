"""pathfm: self-supervised pathology foundation models in JAX/Flax."""

from setuptools import find_packages, setup

# PyTorch interop (timm export / import, docs/interop.md); the JAX side never imports torch.
EXPORT = ["torch>=2.1", "timm>=1.0", "safetensors>=0.4"]
# kaiko.ai's eva on an export (docs/eva.md). kaiko-eva 0.4.5 asks for jsonargparse>=4.30, and pip
# then takes the newest, but from 4.52.0 on eva's CLI refuses its own configs ("criterion:
# torch.nn.CrossEntropyLoss ... Expected a path"); 4.31.0 and 4.51.0 run them end to end
# (tests/test_eva.py runs the one installed). kaiko-eva[vision] 0.4.5 keeps the installed torch,
# torchvision and timm (it asks for torch>=2.3, torchvision>=0.17, timm>=1.0.9).
EVA = ["kaiko-eva[vision]==0.4.5", "jsonargparse[omegaconf]>=4.31,<4.52"]
# Experiment trackers beside TensorBoard (docs/dashboards.md). mlflow-skinny is MLflow's client
# with the local file store; `mlflow ui` comes with the full `mlflow` package.
WANDB = ["wandb>=0.19"]
MLFLOW = ["mlflow-skinny>=2.16"]
# The input benchmark's peers (benchmarks/input_pipeline.py): tiffslide, cuCIM's CPU reader
# (cucim-cu12 installs and reads slides without a GPU), and psutil for CPU time per worker.
BENCH = ["tiffslide>=2.4", "cucim-cu12>=24.0", "psutil>=5.9"]
# The tile store's Beam builds (pathfm.build_tile_store, docs/tile_store.md). Plain
# apache-beam 2.77.0 keeps numpy, jax, grain and tensorflow-datasets; it pins protobuf < 7,
# pyarrow < 26, pillow < 13 and python-dateutil < 3 (pip takes 6.33.6, 25.0.1, 12.3.0, 2.9.0).
TILE_STORE = ["tensorflow-datasets>=4.9.10", "array-record>=0.8"]
BEAM = [*TILE_STORE, "apache-beam>=2.77"]

setup(
    name="pathfm",
    version="0.1.0",
    description="Self-supervised pre-training of pathology ViTs on whole slide images in JAX/Flax.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["pathfm", "pathfm.*"]),
    install_requires=[
        "jax>=0.7",
        "flax>=0.10",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "openslide-python>=1.4",
        "openslide-bin>=4.0",
        "ml-collections>=1.0",
        "absl-py>=2.0",
        "tifffile>=2024.1",
        "imagecodecs>=2024.1",  # tifffile's JPEG codec (writing synthetic slides)
        "simplejpeg>=1.6",  # libjpeg-turbo with DCT-domain scaled decoding (the tile reader)
        "numpy>=1.26",
        "opencv-python-headless>=4.9",
        "tqdm>=4.66",
        "h5py>=3.10",  # PCam's h5 files
        "matplotlib>=3.8",  # python -m pathfm.report
    ],
    extras_require={
        "bench": BENCH,
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.6",  # --no-loadscope-reorder
            "ruff>=0.6",
            "scikit-learn>=1.4",
            "tensorflow-datasets>=4.9.10",  # the TFDS adapter's tests build a real TFDS data set
            "array-record>=0.8",
            *BEAM,  # tests/data/test_tile_store.py builds a store with Beam's DirectRunner
            "tensorboard>=2.16",  # the dashboard tests read the event files back with its reader
            "nbclient>=0.10",  # tests/test_notebook.py executes the tour notebook
            "nbformat>=5.10",
            "ipykernel>=6.29",
            *EXPORT,  # the timm parity tests run against real timm models
            *EVA,  # tests/test_eva.py runs eva on an export
            *WANDB,  # tests/train/test_trackers.py reads back an offline run and a file store
            *MLFLOW,
        ],
        "export": EXPORT,
        "eva": [*EXPORT, *EVA],
        "tfds": TILE_STORE,
        "beam": BEAM,
        "wandb": WANDB,
        "mlflow": MLFLOW,
    },
)
