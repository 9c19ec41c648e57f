"""Speech-to-AU (paper supp. §1): audio → 17 AU codes per video frame.

* ``model``      the network (local + global transformer over audio features, AU heads)
* ``inference``  ``load_s2au(export_dir)`` and ``predict_aus(audio, ...)``: an export's own config,
  no training code

Training is ``emodifftalk.train.tasks.s2au`` (``emodifftalk train s2au``); evaluation
``emodifftalk.eval.s2au``. The audio front end the family shares with the motion model is
``emodifftalk.models.audio_frontend``.
"""
