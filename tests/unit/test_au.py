import pytest

from emodifftalk import au


def test_paper_order():
    assert au.AU_NAMES == ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
                           "AU14", "AU15", "AU17", "AU23", "AU24", "AU25", "AU26", "AU45")
    assert au.NUM_AUS == 17


@pytest.mark.parametrize("name, idx", [("AU12", 8), ("au12", 8), ("12", 8), ("AU_45", 16), ("1", 0)])
def test_au_index_spellings(name, idx):
    assert au.au_index(name) == idx


def test_unknown_au_lists_valid_names():
    with pytest.raises(ValueError, match="AU20.*expected one of AU01"):
        au.au_index("AU20")


def test_vector_round_trip():
    vec = au.au_vector_from_names(["AU06", "AU12"])
    assert sum(vec) == 2 and au.au_names_from_vector(vec) == ["AU06", "AU12"]


def test_speech_and_expression_partition():
    assert set(au.SPEECH_AUS) | set(au.EXPRESSION_AUS) == set(au.AU_NAMES)
    assert "AU26" in au.SPEECH_AUS and "AU01" in au.EXPRESSION_AUS
    assert au.OPENFACE_MISSING_AUS == ("AU24",)
