"""Config presets as plain functions (installed as ``emodifftalk.configs``).

``tiny``: CI and the CPU demo (minutes on 2 cores). ``small``: one GPU. ``paper``: the paper's
sizes and loss weights, RenderMe-360/EmoTalk3D scale.
"""
