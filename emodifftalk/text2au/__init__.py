"""Text-to-AU emotion controller (paper supp. §3).

* ``dataset``    the versioned JSONL data set (``data/text2au_v5.jsonl``), normalisation, splits
* ``validate``   ``emodifftalk text2au check-data``
* ``encoders``   frozen text encoders (minilm / open_clip / hashing) and the feature cache
* ``losses``     focal BCE (eq. 23), structured InfoNCE (eq. 24), total (eq. 25)
* ``predict``    ``Text2AU.load(model_dir).predict(texts)``
* ``evaluate``   accuracy / precision / recall / F1 on the test split
* ``modulation`` ``modulate_aus``: apply text AU probabilities to speech AU codes (lip lock)

The model lives in ``emodifftalk.text2au.model``; training in ``emodifftalk.train.tasks.text2au``.
Submodules are imported lazily (``from emodifftalk.text2au.predict import Text2AU``) so that
importing the package does not load sentence-transformers or open_clip.
"""
