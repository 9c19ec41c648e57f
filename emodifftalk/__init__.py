"""EmoDiffTalk: editable, emotion-aware 3D Gaussian talking heads.

Heavy submodules are imported lazily so ``emodifftalk --help`` stays fast.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "predict_aus"]


def __getattr__(name):
    if name == "predict_aus":
        from emodifftalk.s2au.inference import predict_aus

        return predict_aus
    raise AttributeError(name)
