"""The motion model family's inference-side code: its data (templates, clip features) and loading
an export (``motion.inference.load_motion``). Training lives in ``train/tasks/motion.py`` and
imports from here, never the reverse."""
