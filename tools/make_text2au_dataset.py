#!/usr/bin/env python3
"""Generate the Text-to-AU data set (``emodifftalk/text2au/data/text2au_v<DATA_VERSION>.jsonl``).

The paper asked GPT-5 for FACS-consistent entries and reviewed them by hand; no model is
available here, so the set is authored as hand-curated concept tables (concept -> AU set, type,
phrasings, contrasting concepts) expanded combinatorially over subjects, intensity words and
sentence templates. The expansion is deterministic (fixed seed) and rejects near-duplicates
(same text after normalisation, or normalised token Jaccard >= 0.9), so every description is a
distinct sentence.

AU choices (EMFACS prototypes, FACS anatomy) are documented next to each table. Two global
conventions:

* AU26 (jaw drop) always comes with AU25 (lips part): a dropped jaw parts the lips, and FACS
  co-scores 25+26 in that case. "Lips parted" alone is AU25.
* Winking / closing the eyes map to AU45 (blink), the only eye-closure AU of the 17 (AU43 and
  AU46 are not in the set). Squeezing the eyes shut adds the orbicularis oculi: AU06 + AU07 + AU45.
* Negated actions are absent ("frowning, not smiling" is AU04 only); a neutral face has no AU.

Phrasings come in several registers so the model learns language, not one template: with a
subject ("a man with raised brows"), subject-free ("raised brows", "furious", "lifts the brows"),
everyday words and idioms ("on cloud nine"), intensity words and negations. Sources for the AU
choices: Ekman, Friesen & Hager, *Facial Action Coding System* (2002) for single actions; EMFACS
prototypes (Friesen & Ekman 1983; Matsumoto & Ekman 2008) for emotions; Du, Tao & Martinez,
*Compound facial expressions of emotion* (PNAS 2014) for blends; Keltner (1995) for embarrassment.

Emotion words (v3): the BASIC tables list synonyms per emotion and level, written from general
knowledge of English synonyms (thesaurus-style groups; no thesaurus file was read), graded by
Plutchik's intensity triads (*Emotion: A Psychoevolutionary Synthesis*, 1980:
serenity < joy < ecstasy, pensiveness < sadness < grief, annoyance < anger < rage, apprehension <
fear < terror); degree adverbs are Quirk et al.'s diminishers / minimizers (slight level) and
maximizers / boosters (strong level), and a word may take an adverb of its own level ("a little
annoyed", "utterly terrified"). Every lexicon word gets at least one anchor (``Concept.words``).
Words that occur in the hand-written hold-out sets (``text2au/data/holdout_*.jsonl``) were kept
out of the v3 additions, so those sets keep measuring words the model never saw.

v4 adds what the v3 tables lacked, written from general knowledge before the fifth hold-out set
was seen: situations that elicit an emotion without naming it (``SITUATIONS``, ISEAR-style
antecedents), more idioms per emotion (every idiom now gets an anchor), and a broad smile coded
6+12 (``broad_smile``; a slight or closed-mouth smile stays 12). As for v3, additions whose words
occur together in a hold-out sentence were taken out again after a scripted check (14 of them:
"beaming", "seeing red", "taken aback", "stepped in dog mess", ...), so the hold-out sets
keep measuring phrasings the model never saw. After the fifth set had been scored once, "just"
was taken out of the situations (it had become a cue for an emotion: "not angry, just calm");
the sixth set, written after that, measured the result.

v5 adds people's own words: every sentence of the hand-written sets ``text2au/data/written_*.jsonl``
(six sets, 456 sentences, written in earlier rounds to measure the model; ``written_entries``)
becomes an entry with its writer's FACS labels (454: two code AU26 without AU25, which no paraphrase
words). The template entries are drawn exactly as in v4.
Sets that stay held out are ``holdout_*.jsonl``; ``--without TAG`` leaves a written set out, for
leave-one-set-out measurements.

Usage: ``python tools/make_text2au_dataset.py [--out FILE] [--seed 0] [--without TAG ...]``
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path

from emodifftalk.au import AU_NAMES, au_vector_from_names
from emodifftalk.text2au.evaluate import load_labelled_texts
from emodifftalk.text2au.dataset import (
    DATA_DIR,
    DEFAULT_DATA,
    HOLDOUT_GLOB,
    NEAR_DUP_JACCARD,
    WRITTEN_GLOB,
    Entry,
    jaccard,
    normalize_text,
    token_set,
    write_entries,
)

# --------------------------------------------------------------------------------------------
# Subjects: noun phrase, noun (for "a very happy <noun>"), possessive pronoun
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    np: str
    noun: str | None
    poss: str


SUBJECTS = (
    Subject("a man", "man", "his"), Subject("a woman", "woman", "her"),
    Subject("an old man", "old man", "his"), Subject("an old woman", "old woman", "her"),
    Subject("an elderly person", "elderly person", "their"), Subject("a child", "child", "their"),
    Subject("a boy", "boy", "his"), Subject("a girl", "girl", "her"),
    Subject("a teenager", "teenager", "their"), Subject("a young man", "young man", "his"),
    Subject("a young woman", "young woman", "her"), Subject("a person", "person", "their"),
    Subject("an old person", "old person", "their"), Subject("a middle-aged man", "middle-aged man", "his"),
    Subject("a middle-aged woman", "middle-aged woman", "her"), Subject("a student", "student", "their"),
    Subject("a grandmother", "grandmother", "her"), Subject("a grandfather", "grandfather", "his"),
    Subject("someone", None, "their"), Subject("the speaker", "speaker", "their"),
    Subject("a little boy", "little boy", "his"), Subject("a little girl", "little girl", "her"),
)

# "she"/"he" only take finite-verb sentences ("she winks", "he is furious"), never "with ..." phrases.
PRONOUNS = (Subject("she", None, "her"), Subject("he", None, "his"))
ALL_SUBJECTS = SUBJECTS + PRONOUNS
# Subject-free phrasings ("raised brows", "lifts the brows", "furious"): what people type as prompts.
BARE = Subject("", None, "the")

# Degree adverbs (Quirk, Greenbaum, Leech & Svartvik, *A Comprehensive Grammar of the English
# Language*, 1985, §8.104-8.112): diminishers, compromisers and minimizers mark the slight level,
# maximizers and boosters the strong one. Ambiguous ones ("quite", "rather", "fairly") are left out.
SLIGHT_ADVERBS = ("slightly", "a little", "mildly", "somewhat", "a bit", "a little bit", "faintly", "vaguely",
                  "kind of", "sort of", "barely")
STRONG_ADVERBS = ("very", "extremely", "intensely", "really", "deeply", "incredibly", "utterly", "absolutely",
                  "completely", "totally", "thoroughly", "terribly", "awfully", "truly", "so", "immensely",
                  "enormously")
SLIGHT_NOUN_QUANTIFIERS = ("a hint of", "a trace of", "mild", "a flicker of", "a touch of", "slight")
STRONG_NOUN_QUANTIFIERS = ("intense", "overwhelming", "sheer", "utter", "deep")


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def with_article(phrase: str) -> str:
    return f"{article(phrase)} {phrase}"


# --------------------------------------------------------------------------------------------
# Single facial actions (FACS). Each: key, AUs, region, noun-phrase features, verb phrases
# (3rd person, gerund). "{p}" is the subject's possessive pronoun; "{i}" an optional intensity
# word (binary labels: intensity words do not change which AUs are active).
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Action:
    key: str
    aus: tuple[str, ...]
    region: str
    features: tuple[str, ...]
    verbs: tuple[tuple[str, str], ...]


ACTIONS = (
    Action("inner_brow_raise", ("AU01",), "brow",
           ("{i}raised inner brows", "inner eyebrow corners {i}lifted", "the inner ends of the brows {i}drawn up"),
           (("raises the inner corners of {p} eyebrows", "raising the inner corners of {p} eyebrows"),
            ("lifts {p} inner brows", "lifting {p} inner brows"),
            ("draws the middle of {p} brows upward", "drawing the middle of {p} brows upward"))),
    Action("outer_brow_raise", ("AU02",), "brow",
           ("{i}raised outer brows", "outer eyebrow corners {i}lifted", "the outer ends of the brows arched up"),
           (("raises the outer part of {p} brows", "raising the outer part of {p} brows"),
            ("arches the outer ends of {p} eyebrows", "arching the outer ends of {p} eyebrows"))),
    Action("brow_raise", ("AU01", "AU02"), "brow",
           ("{i}raised eyebrows", "eyebrows {i}lifted high", "arched, raised brows", "brows {i}pulled upward",
            "one eyebrow cocked", "a quizzically lifted brow"),
           (("raises {p} eyebrows", "raising {p} eyebrows"), ("lifts both brows", "lifting both brows"),
            ("cocks an eyebrow", "cocking an eyebrow"), ("arches {p} brows", "arching {p} brows"))),
    Action("brow_lower", ("AU04",), "brow",
           ("a {i}furrowed brow", "{i}knitted eyebrows", "brows {i}lowered and drawn together",
            "a frown line between the brows", "brows drawn down", "a creased forehead"),
           (("furrows {p} brow", "furrowing {p} brow"), ("knits {p} eyebrows", "knitting {p} eyebrows"),
            ("lowers {p} brows", "lowering {p} brows"), ("frowns", "frowning"))),
    Action("upper_lid_raise", ("AU05",), "eye",
           ("{i}widened eyes", "eyes opened wide", "{i}raised upper eyelids", "a wide-eyed stare", "bulging eyes",
            "saucer eyes"),
           (("widens {p} eyes", "widening {p} eyes"), ("opens {p} eyes wide", "opening {p} eyes wide"),
            ("stares wide-eyed", "staring wide-eyed"))),
    Action("cheek_raise", ("AU06",), "eye",
           ("{i}raised cheeks", "cheeks pushed up under the eyes", "crow's feet at the eye corners",
            "bunched-up cheeks", "laughter lines around the eyes"),
           (("raises {p} cheeks", "raising {p} cheeks"),
            ("crinkles the corners of {p} eyes", "crinkling the corners of {p} eyes"),
            ("lifts {p} cheeks", "lifting {p} cheeks"))),
    Action("lid_tighten", ("AU07",), "eye",
           ("{i}narrowed eyes", "{i}tightened eyelids", "squinting eyes", "eyes narrowed to slits", "a squint"),
           (("narrows {p} eyes", "narrowing {p} eyes"), ("squints", "squinting"),
            ("tightens {p} eyelids", "tightening {p} eyelids"), ("peers through narrowed eyes",
                                                                  "peering through narrowed eyes"))),
    Action("nose_wrinkle", ("AU09",), "nose",
           ("a {i}wrinkled nose", "a scrunched-up nose", "creases across the bridge of the nose"),
           (("wrinkles {p} nose", "wrinkling {p} nose"), ("scrunches up {p} nose", "scrunching up {p} nose"),
            ("crinkles {p} nose", "crinkling {p} nose"))),
    Action("upper_lip_raise", ("AU10",), "mouth",
           ("a {i}raised upper lip", "an upper lip curled upward", "the upper lip lifted off the teeth",
            "a curled lip"),
           (("raises {p} upper lip", "raising {p} upper lip"), ("curls {p} upper lip", "curling {p} upper lip"),
            ("lifts {p} upper lip", "lifting {p} upper lip"))),
    Action("lip_corner_pull", ("AU12",), "mouth",
           ("a slight smile", "upturned lip corners", "lip corners {i}pulled up",
            "a closed-mouth smile", "a small grin"),
           (("smiles", "smiling"), ("pulls up the corners of {p} mouth", "pulling up the corners of {p} mouth"),
            ("grins", "grinning"))),
    Action("dimpler", ("AU14",), "mouth",
           ("dimpled mouth corners", "mouth corners {i}tucked in", "a one-sided tightening of the lip corner"),
           (("dimples the corners of {p} mouth", "dimpling the corners of {p} mouth"),
            ("tucks in one corner of {p} mouth", "tucking in one corner of {p} mouth"))),
    Action("lip_corner_depress", ("AU15",), "mouth",
           ("{i}downturned lip corners", "a downturned mouth", "mouth corners {i}drooping", "a frowning mouth",
            "sagging mouth corners"),
           (("turns down the corners of {p} mouth", "turning down the corners of {p} mouth"),
            ("pulls {p} lip corners down", "pulling {p} lip corners down"))),
    Action("chin_raise", ("AU17",), "mouth",
           ("a {i}bunched, wrinkled chin", "the lower lip pushed up by the chin", "a puckered chin",
            "a quivering chin"),
           (("pushes up {p} chin and lower lip", "pushing up {p} chin and lower lip"),
            ("bunches {p} chin", "bunching {p} chin"))),
    Action("lip_tighten", ("AU23",), "mouth",
           ("{i}tightened lips", "thin, tense lips", "narrowed, tightened lips", "lips drawn thin"),
           (("tightens {p} lips", "tightening {p} lips"), ("thins {p} lips", "thinning {p} lips"))),
    Action("lip_press", ("AU24",), "mouth",
           ("lips {i}pressed together", "{i}pressed lips", "lips pressed shut", "lips clamped shut"),
           (("presses {p} lips together", "pressing {p} lips together"),
            ("compresses {p} lips", "compressing {p} lips"), ("clamps {p} lips shut", "clamping {p} lips shut"))),
    Action("lips_part", ("AU25",), "mouth",
           ("{i}parted lips", "lips slightly apart", "lips separated", "a slightly open mouth"),
           (("parts {p} lips", "parting {p} lips"), ("opens {p} lips a little", "opening {p} lips a little"))),
    Action("jaw_drop", ("AU25", "AU26"), "mouth",
           ("a dropped jaw", "a gaping mouth", "a mouth hanging wide open", "a wide-open mouth", "a slack jaw"),
           (("drops {p} jaw", "dropping {p} jaw"), ("lets {p} jaw fall open", "letting {p} jaw fall open"),
            ("opens {p} mouth wide", "opening {p} mouth wide"), ("gapes", "gaping"))),
    Action("blink", ("AU45",), "eye",
           ("closed eyes", "eyes shut", "eyelids closed", "a wink", "a slow blink", "eyelids fluttering down"),
           (("blinks", "blinking"), ("winks", "winking"), ("closes {p} eyes", "closing {p} eyes"),
            ("shuts {p} eyes", "shutting {p} eyes"), ("blinks twice", "blinking twice"))),
)
ACTION = {a.key: a for a in ACTIONS}
ACTION_INTENSITY = ("", "slightly ", "strongly ")

# Named multi-action expressions (not emotions): key, AUs, descriptions, contrasting concept keys.
NAMED_COMBOS = (
    ("duchenne_smile", ("AU06", "AU12"),
     ("{np} with a genuine smile that reaches the eyes", "{np} with a warm Duchenne smile",
      "{np} smiling so that {p} cheeks lift and {p} eyes crinkle", "{np} with a heartfelt smile")),
    ("broad_smile", ("AU06", "AU12"),  # a broad smile recruits the cheek raiser (FACS 6+12, v4)
     ("{np} with a broad smile", "{np} with a big, wide smile", "{np} smiling broadly",
      "{np} with a huge smile that lifts the cheeks")),
    ("laugh", ("AU06", "AU12", "AU25", "AU26"),
     ("{np} laughing out loud", "{np} roaring with laughter", "{np} with an open-mouthed laugh",
      "{np} bursting into laughter")),
    ("toothy_grin", ("AU12", "AU25"),
     ("{np} with a toothy grin", "{np} grinning with parted lips", "{np} flashing a grin that shows the teeth")),
    ("snarl", ("AU09", "AU10"),
     ("{np} snarling", "{np} with a snarl that wrinkles the nose", "{np} baring the upper teeth in a snarl")),
    ("scowl", ("AU04", "AU07"),
     ("{np} scowling", "{np} with a dark scowl", "{np} glaring with lowered brows and narrowed eyes")),
    ("concerned_frown", ("AU01", "AU04"),
     ("{np} with a concerned frown", "{np} with a worried crease between raised inner brows",
      "{np} with brows pinched upward in concern")),
    ("pout", ("AU15", "AU17"),
     ("{np} pouting", "{np} with a sulky pout", "{np} sulking with a pushed-up lower lip and downturned mouth")),
    ("smirk", ("AU12", "AU14"),
     ("{np} with a one-sided smirk", "{np} smirking", "{np} with a crooked half smile")),
    ("squeeze_eyes", ("AU06", "AU07", "AU45"),
     ("{np} squeezing {p} eyes shut", "{np} with eyes screwed tightly shut", "{np} scrunching {p} eyes closed")),
    ("tight_lipped_frown", ("AU04", "AU23", "AU24"),
     ("{np} with a tight-lipped frown", "{np} frowning with lips pressed into a thin line",
      "{np} with a stern frown and compressed lips")),
    ("grimace_pain", ("AU04", "AU06", "AU07", "AU09", "AU10", "AU45"),
     ("{np} grimacing in pain", "{np} wincing with pain", "{np} with a pained grimace and eyes squeezed shut",
      "{np} in pain")),
    ("gasp", ("AU01", "AU02", "AU25", "AU26"),
     ("{np} gasping with raised brows", "{np} with raised eyebrows and a gaping mouth",
      "{np} whose brows shoot up as the jaw drops")),
    ("stare", ("AU05", "AU24"),
     ("{np} staring wide-eyed with lips pressed together", "{np} with a tense, wide-eyed stare and pressed lips")),
    ("sneer", ("AU09", "AU10", "AU14"),
     ("{np} sneering", "{np} with a disdainful sneer", "{np} with a curled lip and wrinkled nose sneer")),
    ("suppressed_smile", ("AU12", "AU24"),  # a smile held back by pressing the lips (Keltner 1995)
     ("{np} suppressing a smile", "{np} fighting back a grin", "{np} stifling a giggle with pressed lips",
      "{np} biting back a smile")),
    ("crying", ("AU01", "AU04", "AU15", "AU17"),  # EMFACS sadness with the chin boss of crying
     ("{np} sobbing", "{np} in tears", "{np} weeping with a trembling chin", "{np} crying")),
    ("neutral", (),
     ("{np} with a blank expression", "{np} with a poker face", "{np} showing no emotion at all",
      "{np} with a relaxed, neutral expression", "{np} looking deadpan", "{np} with an impassive face")),
)

# --------------------------------------------------------------------------------------------
# Basic emotions (EMFACS prototypes). Intensity can change which AUs fire: a slight smile has no
# cheek raise, a very happy face opens the lips. Adjectives / nouns carry their own level.
# --------------------------------------------------------------------------------------------

BASIC = {
    "happiness": {
        "levels": {"slight": ("AU12",), "base": ("AU06", "AU12"), "strong": ("AU06", "AU12", "AU25")},
        "adjs": (("happy", "base"), ("joyful", "base"), ("cheerful", "base"), ("glad", "base"),
                 ("pleased", "slight"), ("content", "slight"), ("delighted", "strong"), ("overjoyed", "strong"),
                 ("ecstatic", "strong"), ("elated", "strong"), ("cheery", "base"), ("jolly", "base"),
                 ("joyous", "base"), ("amused", "slight"), ("satisfied", "slight"), ("gleeful", "strong"),
                 ("jubilant", "strong"),
                 # v3 (thesaurus synonyms; Plutchik's serenity < joy < ecstasy for the levels)
                 ("contented", "slight"), ("serene", "slight"), ("good-humoured", "slight"), ("merry", "base"),
                 ("upbeat", "base"), ("light-hearted", "base"), ("sunny", "base"), ("radiant", "base"),
                 ("euphoric", "strong"), ("exhilarated", "strong"), ("rapturous", "strong"),
                 ("exultant", "strong")),
        "nouns": (("joy", "base"), ("happiness", "base"), ("delight", "strong"), ("glee", "strong"),
                  ("amusement", "slight"), ("cheer", "base"),
                  ("contentment", "slight"), ("pleasure", "slight"), ("serenity", "slight"),
                  ("merriment", "base"), ("gladness", "base"), ("bliss", "strong"), ("euphoria", "strong"),
                  ("elation", "strong"), ("ecstasy", "strong")),
        "idioms": (("on cloud nine", "strong"), ("over the moon", "strong"), ("tickled pink", "base"),
                   ("in high spirits", "base"), ("all smiles", "base"),
                   # v4 (common English idioms, from general knowledge of idiom dictionaries)
                   ("walking on air", "strong"), ("pleased as Punch", "base"), ("in seventh heaven", "strong"),
                   ("happy as Larry", "base"), ("full of the joys of spring", "base"),
                   ("like a kid in a sweet shop", "strong")),
        "contrast": ("sadness", "anger", "disgust", "pout"),
    },
    "sadness": {
        "levels": {"slight": ("AU01", "AU15"), "base": ("AU01", "AU04", "AU15"),
                   "strong": ("AU01", "AU04", "AU15", "AU17")},
        "adjs": (("sad", "base"), ("unhappy", "base"), ("sorrowful", "base"), ("downcast", "base"),
                 ("gloomy", "base"), ("melancholic", "base"), ("glum", "slight"), ("heartbroken", "strong"),
                 ("devastated", "strong"), ("grief-stricken", "strong"), ("miserable", "strong"),
                 ("depressed", "base"), ("dejected", "base"), ("crestfallen", "base"), ("mournful", "base"),
                 ("upset", "base"), ("disappointed", "slight"), ("tearful", "strong"),
                 # v3 (thesaurus synonyms; Plutchik's pensiveness < sadness < grief)
                 ("pensive", "slight"), ("subdued", "slight"), ("disheartened", "slight"),
                 ("saddened", "base"), ("doleful", "base"), ("morose", "base"), ("sombre", "base"),
                 ("melancholy", "base"), ("dispirited", "base"), ("downhearted", "base"),
                 ("despondent", "strong"), ("inconsolable", "strong"), ("anguished", "strong"),
                 ("distraught", "strong"), ("desolate", "strong")),
        "nouns": (("sadness", "base"), ("sorrow", "base"), ("grief", "strong"), ("despair", "strong"),
                  ("heartache", "base"), ("disappointment", "slight"), ("misery", "strong"),
                  ("pensiveness", "slight"), ("regret", "slight"), ("gloom", "base"),
                  ("unhappiness", "base"), ("dejection", "base"), ("anguish", "strong"), ("desolation", "strong")),
        "idioms": (("in a blue mood", "base"), ("down in the mouth", "base"), ("close to tears", "strong"),
                   ("heavy-hearted", "base"),
                   # v4
                   ("on the verge of tears", "strong"), ("in the doldrums", "slight"),
                   ("with a lump in the throat", "strong")),
        "contrast": ("happiness", "surprise", "laugh", "duchenne_smile"),
    },
    "anger": {
        "levels": {"slight": ("AU04", "AU07"), "base": ("AU04", "AU05", "AU07", "AU23"),
                   "strong": ("AU04", "AU05", "AU07", "AU10", "AU23")},
        "adjs": (("angry", "base"), ("mad", "base"), ("cross", "base"), ("hostile", "base"),
                 ("annoyed", "slight"), ("irritated", "slight"), ("furious", "strong"), ("enraged", "strong"),
                 ("livid", "strong"), ("irate", "strong"), ("fuming", "strong"), ("seething", "strong"),
                 ("infuriated", "strong"), ("grumpy", "slight"), ("frustrated", "slight"), ("bad-tempered", "base"),
                 ("aggressive", "base"),
                 # v3 (thesaurus synonyms; Plutchik's annoyance < anger < rage)
                 ("irked", "slight"), ("peeved", "slight"), ("vexed", "slight"), ("miffed", "slight"),
                 ("cranky", "slight"), ("testy", "slight"), ("grouchy", "slight"), ("displeased", "slight"),
                 ("exasperated", "slight"), ("riled", "base"), ("heated", "base"), ("bristling", "base"),
                 ("belligerent", "base"), ("ill-tempered", "base"), ("wrathful", "strong"), ("raging", "strong"),
                 ("apoplectic", "strong"), ("incandescent", "strong"), ("steaming", "strong")),
        "nouns": (("anger", "base"), ("irritation", "slight"), ("rage", "strong"), ("fury", "strong"),
                  ("annoyance", "slight"), ("frustration", "slight"), ("wrath", "strong"),
                  ("exasperation", "slight"), ("vexation", "slight"), ("displeasure", "slight"), ("ire", "base"),
                  ("hostility", "base"), ("outrage", "strong")),
        "idioms": (("hot under the collar", "base"), ("up in arms", "base"), ("ready to explode", "strong"),
                   ("fit to be tied", "strong"), ("in a foul temper", "base"),
                   # v4
                   ("blowing a fuse", "strong"), ("like a bear with a sore head", "base"),
                   ("foaming at the mouth", "strong"), ("bent out of shape", "slight"), ("in a black mood", "base"),
                   ("spitting feathers", "strong")),
        "contrast": ("happiness", "fear", "sadness", "duchenne_smile"),
    },
    "surprise": {
        "levels": {"slight": ("AU01", "AU02", "AU05"), "base": ("AU01", "AU02", "AU05", "AU25", "AU26"),
                   "strong": ("AU01", "AU02", "AU05", "AU25", "AU26")},
        "adjs": (("surprised", "base"), ("amazed", "base"), ("astonished", "base"), ("startled", "base"),
                 ("stunned", "strong"), ("astounded", "strong"), ("dumbfounded", "strong"),
                 ("flabbergasted", "strong"), ("shocked", "strong"), ("gobsmacked", "strong"), ("awestruck", "base"),
                 ("speechless", "strong"),
                 # v3 (thesaurus synonyms)
                 ("agog", "base"), ("awed", "base"), ("open-mouthed", "base"), ("wonderstruck", "base"),
                 ("staggered", "strong"), ("floored", "strong"), ("stupefied", "strong")),
        "idioms": (("caught off guard", "base"), ("taken by surprise", "base"), ("thunderstruck", "strong"),
                   ("lost for words", "strong"),
                   # v4
                   ("bowled over", "base"), ("knocked for six", "strong"), ("doing a double take", "base"),
                   ("with eyes out on stalks", "strong")),
        "nouns": (("surprise", "base"), ("astonishment", "base"), ("amazement", "base"), ("shock", "strong"),
                  ("wonder", "base"), ("awe", "base"), ("disbelief", "base"), ("stupefaction", "strong")),
        "contrast": ("anger", "sadness", "scowl", "squeeze_eyes"),
    },
    "fear": {
        "levels": {"slight": ("AU01", "AU02", "AU04", "AU05"), "base": ("AU01", "AU02", "AU04", "AU05", "AU25"),
                   "strong": ("AU01", "AU02", "AU04", "AU05", "AU25", "AU26")},
        "adjs": (("afraid", "base"), ("scared", "base"), ("frightened", "base"), ("fearful", "base"),
                 ("terrified", "strong"), ("petrified", "strong"), ("panic-stricken", "strong"),
                 ("nervous", "slight"), ("apprehensive", "slight"), ("spooked", "base"), ("panicked", "strong"),
                 ("horror-struck", "strong"),
                 # v3 (thesaurus synonyms; Plutchik's apprehension < fear < terror)
                 ("jittery", "slight"), ("jumpy", "slight"), ("timid", "slight"), ("wary", "slight"),
                 ("edgy", "slight"), ("daunted", "slight"), ("shaken", "base"), ("intimidated", "base"),
                 ("unnerved", "base"), ("threatened", "base"), ("panicky", "strong"), ("terror-stricken", "strong"),
                 ("hysterical", "strong"), ("paralysed", "strong")),
        "nouns": (("fear", "base"), ("fright", "base"), ("dread", "base"), ("terror", "strong"),
                  ("panic", "strong"), ("horror", "strong"), ("apprehension", "slight"), ("unease", "slight"),
                  ("trepidation", "slight"), ("alarm", "base"), ("fearfulness", "base")),
        "idioms": (("scared stiff", "strong"), ("frozen with fear", "strong"), ("white as a sheet", "base"),
                   ("trembling like a leaf", "base"),
                   # v4
                   ("shaking in their boots", "base"), ("jumping out of their skin", "strong"), ("on edge", "slight"),
                   ("with the heart in the mouth", "base")),
        "contrast": ("happiness", "anger", "contempt", "smirk"),
    },
    "disgust": {
        "levels": {"slight": ("AU09",), "base": ("AU09", "AU10", "AU15"), "strong": ("AU09", "AU10", "AU15", "AU17")},
        "adjs": (("disgusted", "base"), ("grossed out", "base"), ("repulsed", "strong"), ("revolted", "strong"),
                 ("sickened", "strong"), ("nauseated", "strong"), ("repelled", "strong"), ("put off", "slight"),
                 ("queasy", "base"),
                 # v3 (thesaurus synonyms)
                 ("squeamish", "slight"), ("turned off", "slight"), ("nauseous", "strong")),
        "nouns": (("disgust", "base"), ("distaste", "slight"), ("revulsion", "strong"), ("loathing", "strong"),
                  ("repugnance", "strong"), ("aversion", "slight"),
                  ("queasiness", "base"), ("nausea", "strong"), ("abhorrence", "strong"), ("repulsion", "strong")),
        "idioms": (("sick to the stomach", "strong"), ("utterly grossed out", "strong"),
                   # v4
                   ("green around the gills", "base"), ("put off their food", "slight"),
                   ("ready to throw up", "strong")),
        "contrast": ("happiness", "surprise", "duchenne_smile", "brow_raise"),
    },
    "contempt": {  # unilateral AU14 (FACS R14); the 17-AU code has no side, so it is AU14
        "levels": {"base": ("AU14",)},
        "adjs": (("contemptuous", "base"), ("scornful", "base"), ("disdainful", "base"),
                 ("condescending", "base"), ("dismissive", "base"), ("snide", "base"), ("haughty", "base"),
                 ("derisive", "base"), ("mocking", "base"), ("supercilious", "base"),
                 # v3 (thesaurus synonyms)
                 ("patronising", "base"), ("superior", "base"), ("disparaging", "base"), ("scoffing", "base"),
                 ("sardonic", "base"), ("arrogant", "base"), ("snooty", "base"), ("snobbish", "base"),
                 ("sniffy", "base"), ("withering", "base")),
        "nouns": (("contempt", "base"), ("scorn", "base"), ("disdain", "base"), ("derision", "base"),
                  ("condescension", "base"), ("mockery", "base"), ("disrespect", "base")),
        "idioms": (("turning up the nose", "base"),),  # v4
        "contrast": ("fear", "surprise", "sadness", "laugh"),
    },
}

# Per emotion and level, how many anchor descriptions to emit.
BASIC_COUNTS = {"slight": 7, "base": 16, "strong": 10}
CONTEMPT_COUNT = 14

# --------------------------------------------------------------------------------------------
# Situations (v4): events that elicit a basic emotion, described without naming it ("someone
# who found a hair in the soup"). Written from general knowledge in the spirit of the ISEAR
# antecedent survey (Scherer & Wallbott 1994); each is coded with its emotion's base-level
# prototype, since an event names the emotion, not its degree. "done" completes "someone who
# ..."; "doing" completes "someone ...". No "just": in every situation it became a cue for an
# emotion, and "not angry, just calm" then read as one.
# --------------------------------------------------------------------------------------------

SITUATIONS = {
    "happiness": {
        "done": ("won the lottery", "got the job of their dreams", "has passed the driving test",
                 "heard wonderful news", "scored the winning goal", "got engaged",
                 "has been given a puppy", "saw an old friend walk through the door"),
        "doing": ("watching puppies play in the garden", "holding a newborn grandchild for the first time",
                  "celebrating a win with friends", "reading a kind letter from a friend",
                  "dancing at a wedding", "opening exam results with top marks"),
    },
    "sadness": {
        "done": ("lost a beloved pet", "heard that a close friend had died", "was dumped",
                 "failed the exam after months of work", "missed saying goodbye to a dying parent",
                 "has been let go from work"),
        "doing": ("standing at a graveside in the rain", "reading old letters from someone who has died",
                  "packing up a childhood home for the last time", "waving goodbye at the station",
                  "sitting alone in an empty flat after the divorce", "looking at photos of a lost friend"),
    },
    "anger": {
        "done": ("was insulted in front of everyone", "found the car keyed in the car park",
                 "was lied to by a best friend", "found the house trashed after a party",
                 "was blamed for someone else's mistake", "had a bike stolen",
                 "lost a match to a cheat"),
        "doing": ("arguing with a rude shop assistant", "being shouted at for no reason",
                  "watching someone kick a dog", "reading an unfair parking fine",
                  "listening to a neighbour's drilling at midnight", "being pushed out of the queue"),
    },
    "surprise": {
        "done": ("walked into a surprise party", "saw a magician make a coin vanish",
                 "found money in an old coat", "bumped into an old friend abroad",
                 "saw snow in July"),
        "doing": ("watching a rabbit pulled out of a hat", "opening a door to find the whole family there",
                  "reading a headline nobody expected", "seeing a celebrity in the supermarket",
                  "hearing a baby say its first word"),
    },
    "fear": {
        "done": ("heard a noise downstairs in the middle of the night", "saw a snake by the path",
                 "felt the plane drop in turbulence", "realised the brakes are not working",
                 "got lost in the woods after dark", "saw a shadow move in an empty house"),
        "doing": ("standing at the edge of a cliff", "being chased by a large dog", "creeping through a dark cellar",
                  "waiting for the results of a biopsy", "hiding from a burglar in a wardrobe"),
    },
    "disgust": {
        "done": ("found a hair in the soup", "saw maggots in the bin", "drank from a mouldy cup",
                 "caught a whiff of the drains"),
        "doing": ("cleaning a blocked toilet", "smelling rotten fish", "looking at an infected wound",
                  "picking a slug out of the salad", "emptying a bin full of rotting food"),
    },
    "contempt": {
        "done": ("heard a pompous excuse", "watched a rival fumble an easy task",
                 "was offered a bribe by a sleazy salesman"),
        "doing": ("listening to a bragging rival", "watching an amateur show off",
                  "hearing a feeble excuse from a lazy colleague"),
    },
}
SITUATION_COUNT = 8  # anchors per emotion's situation concept


def situation_texts(spec: dict) -> list[tuple[str, str]]:
    out = []
    for done in spec["done"]:
        out += [(f"{s.np} who {done}", "S1") for s in SUBJECTS]
        out += [(f"like someone who {done}", "S2"), (f"the face of someone who {done}", "S3"),
                (f"the look of a person who {done}", "S4")]
        out += [(f"{s.np} {done}", "S5") for s in PRONOUNS]
    for doing in spec["doing"]:
        out += [(f"{s.np} {doing}", "S6") for s in SUBJECTS if s.noun]
        out += [(f"someone {doing}", "S7"), (f"the face of someone {doing}", "S8"),
                (f"like a person {doing}", "S9")]
        out += [(f"{s.np} is {doing}", "S10") for s in PRONOUNS]
    return out


# --------------------------------------------------------------------------------------------
# Mixed emotions: blends of basic emotions (AU unions pruned to what co-occurs anatomically)
# and complex affective states. "pairs" are (adjective, adjective) for "happy-surprised";
# "adv_pairs" are (adverb, adjective) for "happily surprised"; "names" are single words.
# --------------------------------------------------------------------------------------------

MIXED = {
    "happy_surprise": {"aus": ("AU01", "AU02", "AU05", "AU06", "AU12", "AU25"),
                       "pairs": (("happy", "surprised"), ("delighted", "amazed"), ("joyful", "astonished")),
                       "adv_pairs": (("happily", "surprised"), ("pleasantly", "surprised")),
                       "names": ("thrilled",), "nouns": (("joy", "surprise"), ("delight", "amazement")),
                       "contrast": ("sadness", "anger", "disgust")},
    "sad_anger": {"aus": ("AU01", "AU04", "AU07", "AU15", "AU23"),
                  "pairs": (("sad", "angry"), ("hurt", "angry"), ("sorrowful", "furious")),
                  "adv_pairs": (("bitterly", "upset"),), "names": ("resentful", "embittered"),
                  "nouns": (("sadness", "anger"), ("grief", "rage")),
                  "contrast": ("happiness", "surprise", "laugh")},
    "fear_surprise": {"aus": ("AU01", "AU02", "AU04", "AU05", "AU25", "AU26"),
                      "pairs": (("fearful", "surprised"), ("scared", "shocked"), ("startled", "frightened")),
                      "adv_pairs": (("fearfully", "surprised"),), "names": ("alarmed", "aghast"),
                      "nouns": (("fear", "surprise"), ("terror", "shock")),
                      "contrast": ("happiness", "contempt", "smirk")},
    "anger_disgust": {"aus": ("AU04", "AU07", "AU09", "AU10", "AU23"),
                      "pairs": (("angry", "disgusted"), ("furious", "repulsed"), ("disgusted", "irate")),
                      "adv_pairs": (("angrily", "disgusted"),), "names": ("indignant",),
                      "nouns": (("anger", "disgust"), ("rage", "revulsion")),
                      "contrast": ("happiness", "surprise", "fear")},
    "anger_surprise": {"aus": ("AU04", "AU05", "AU07", "AU25", "AU26"),
                       "pairs": (("angry", "surprised"), ("shocked", "angry"), ("furious", "stunned")),
                       "adv_pairs": (("angrily", "surprised"),), "names": ("outraged",),
                       "nouns": (("anger", "surprise"), ("fury", "shock")),
                       "contrast": ("happiness", "sadness", "contempt")},
    "sad_fear": {"aus": ("AU01", "AU02", "AU04", "AU05", "AU15"),
                 "pairs": (("sad", "afraid"), ("scared", "sad"), ("frightened", "sorrowful")),
                 "adv_pairs": (("fearfully", "sad"),), "names": ("despairing", "forlorn"),
                 "nouns": (("sadness", "fear"), ("grief", "dread")),
                 "contrast": ("happiness", "anger", "contempt")},
    "fear_disgust": {"aus": ("AU01", "AU02", "AU04", "AU05", "AU09", "AU25"),
                     "pairs": (("afraid", "disgusted"), ("scared", "repulsed")),
                     "adv_pairs": (("fearfully", "disgusted"),), "names": ("horrified",),
                     "nouns": (("fear", "disgust"), ("terror", "revulsion")),
                     "contrast": ("happiness", "contempt", "sadness")},
    "disgust_surprise": {"aus": ("AU01", "AU02", "AU05", "AU09", "AU10", "AU25", "AU26"),
                         "pairs": (("disgusted", "surprised"), ("shocked", "disgusted")),
                         "adv_pairs": (("disgustedly", "surprised"),), "names": ("appalled",),
                         "nouns": (("disgust", "surprise"), ("revulsion", "shock")),
                         "contrast": ("happiness", "sadness", "contempt")},
    "bittersweet": {"blend": False, "aus": ("AU01", "AU04", "AU12"),  # smile under sad (oblique) brows
                    "pairs": (("happy", "sad"), ("sad", "smiling")), "adv_pairs": (("sadly", "smiling"),),
                    "names": ("bittersweet", "wistful", "nostalgic"),
                    "nouns": (("joy", "sadness"), ("happiness", "sorrow")),
                    "contrast": ("anger", "disgust", "surprise")},
    "contempt_anger": {"aus": ("AU04", "AU07", "AU14"),
                       "pairs": (("angry", "contemptuous"), ("scornful", "angry")),
                       "adv_pairs": (("contemptuously", "angry"),), "names": ("spiteful",),
                       "nouns": (("anger", "contempt"), ("rage", "scorn")),
                       "contrast": ("happiness", "fear", "surprise")},
    "smug": {"blend": False, "aus": ("AU12", "AU14"),  # contempt + happiness: a unilateral smile
             "pairs": (("happy", "contemptuous"), ("pleased", "scornful")), "adv_pairs": (("smugly", "pleased"),),
             "names": ("smug", "self-satisfied", "gloating"),
             "nouns": (("satisfaction", "contempt"),), "contrast": ("sadness", "fear", "surprise")},
    "embarrassed": {"blend": False, "aus": ("AU12", "AU24"),  # Keltner: smile controlled by lip press
                    "pairs": (("embarrassed", "amused"),), "adv_pairs": (("sheepishly", "smiling"),),
                    "names": ("embarrassed", "sheepish", "abashed"),
                    "nouns": (("embarrassment", "amusement"),), "contrast": ("anger", "surprise", "fear")},
    "worried": {"blend": False, "aus": ("AU01", "AU04"),  # oblique brows of mild fear/sadness
                "pairs": (("worried", "tense"),), "adv_pairs": (("visibly", "worried"), ("deeply", "concerned")),
                "names": ("worried", "concerned", "anxious", "uneasy", "troubled"),
                "nouns": (("worry", "concern"),), "contrast": ("happiness", "surprise", "anger")},
    "confused": {"blend": False, "aus": ("AU04", "AU07"),  # confusion: brow lowerer + lid tightener (Grafsgaard et al.)
                 "pairs": (("confused", "puzzled"),), "adv_pairs": (("utterly", "confused"), ("completely", "puzzled")),
                 "names": ("confused", "puzzled", "perplexed", "baffled"),
                 "nouns": (("confusion", "doubt"),), "contrast": ("happiness", "surprise", "fear")},
    "determined": {"blend": False, "aus": ("AU04", "AU17", "AU24"),  # set jaw: lowered brows, pressed lips, raised chin
                   "pairs": (("determined", "focused"),), "adv_pairs": (("grimly", "determined"),),
                   "names": ("determined", "resolute", "stern"),
                   "nouns": (("determination", "resolve"),), "contrast": ("happiness", "surprise", "fear")},
}
MIXED_COUNT = 8  # anchors per mixed concept (fewer when phrasings run out)
COVER_EXTRA = 3  # an emotion level gets at least (its lexicon words + this many) anchors

SIMPLE_COUNT = 9  # anchors per single action
NAMED_COUNT = 4  # anchors per named combination
PAIR_COUNT = 110  # generated two-action combinations
TRIPLE_COUNT = 45  # generated three-action combinations

NEUTRAL_NEGATIVES = ("a completely neutral, relaxed face", "an expressionless face at rest",
                     "a blank face showing no emotion", "a calm face with no visible muscle movement")


# --------------------------------------------------------------------------------------------
# Phrasing generators: each returns the list of all candidate texts for a concept
# --------------------------------------------------------------------------------------------


def intensified(word: str, level: str, rng: random.Random) -> str:
    if level == "slight":
        return f"{rng.choice(SLIGHT_ADVERBS)} {word}"
    if level == "strong":
        return f"{rng.choice(STRONG_ADVERBS)} {word}"
    return word


def emotion_texts(spec: dict, level: str, rng: random.Random) -> list[tuple[str, str]]:
    """(text, template id) candidates for a basic emotion at ``level``."""
    out = []
    adjs = []  # (possibly intensified) adjectives realising this level
    for word, wl in spec["adjs"]:
        if wl == level:
            adjs.append(word)
            if level in ("slight", "strong"):  # a degree adverb of the word's own level: "a little annoyed"
                adjs.append(intensified(word, level, rng))
        elif wl == "base" and level in ("slight", "strong"):
            adjs.append(intensified(word, level, rng))
    nouns = [w for w, nl in spec["nouns"] if nl == level]
    base_nouns = [w for w, nl in spec["nouns"] if nl == "base"]
    if level == "slight":
        nouns = nouns + [f"{q} {w}" for w in base_nouns for q in SLIGHT_NOUN_QUANTIFIERS]
    elif level == "strong":
        nouns = nouns + [f"{q} {w}" for w in base_nouns for q in STRONG_NOUN_QUANTIFIERS]
    for adj in adjs:
        attributive = not adj.startswith("a ")  # "a bit sad" cannot precede a noun ("an a bit sad man")
        for s in SUBJECTS:
            if s.noun and attributive:
                out.append((f"{article(adj)} {adj} {s.noun}", "A1"))
            out += [(f"{s.np} who is {adj}", "A2"), (f"{s.np} who looks {adj}", "A3"),
                    (f"{s.np} looking {adj}", "A4"), (f"{s.np} feeling {adj}", "A5"),
                    (f"{s.np} is {adj}", "A7"), (f"{s.np} who seems {adj}", "A9")]
            if attributive:
                out += [(f"{s.np} with {with_article(adj)} expression", "A6"),
                        (f"{s.np} with {with_article(adj)} face", "A8")]
            out.append((f"{s.np} who appears {adj}", "A11"))
            if s.noun and " " not in adj:  # "an angry-looking man"
                out.append((f"{article(adj)} {adj}-looking {s.noun}", "A10"))
    for noun in nouns:
        for s in SUBJECTS:
            out += [(f"{s.np} filled with {noun}", "N1"), (f"{s.np} showing {noun}", "N2"),
                    (f"{s.np} whose face shows {noun}", "N4"),
                    (f"{s.np} with a face full of {noun}", "N5")]
            if " " not in noun:  # "a look of a hint of joy" reads badly
                out += [(f"{s.np} with a look of {noun}", "N3"), (f"{s.np} with an expression of {noun}", "N6")]
    for s in PRONOUNS:
        out += [(f"{s.np} is {adj}", "P1") for adj in adjs] + [(f"{s.np} looks {adj}", "P2") for adj in adjs]
        out += [(f"{s.np} feels {adj}", "P3") for adj in adjs] + [(f"{s.np} shows {noun}", "P4") for noun in nouns]
    for adj in adjs:  # subject-free
        out += [(adj, "B1"), (f"looking {adj}", "B2"), (f"feeling {adj}", "B3")]
        if not adj.startswith("a "):
            out += [(f"{with_article(adj)} look", "B4"), (f"{with_article(adj)} face", "B5"),
                    (f"with {with_article(adj)} expression", "B10")]
        if " " not in adj:  # one word, no degree adverb
            out += [(f"{adj}-looking", "B9"), (f"visibly {adj}", "B11")]
    for noun in nouns:
        out += [(f"{noun} written all over the face", "B6"), (f"showing {noun}", "B7")]
        if " " not in noun:
            out.append((f"a look of {noun}", "B8"))
    for idiom, il in spec.get("idioms", ()):
        if il != level:
            continue
        if idiom.startswith("with "):  # "a man with a lump in the throat", "she is with ..." reads badly
            out += [(f"{s.np} {idiom}", "I1") for s in SUBJECTS] + [(idiom, "I3")]
        else:
            out += [(f"{s.np} who is {idiom}", "I1") for s in SUBJECTS]
            out += [(f"{s.np} is {idiom}", "I2") for s in PRONOUNS] + [(idiom, "I3")]
    return out


def negated_texts(spec: dict, others: list[str]) -> list[tuple[str, str]]:
    """"X, not Y" phrasings of a base-level emotion: only X's AUs are active."""
    adjs = [w for w, wl in spec["adjs"] if wl == "base"]
    out = []
    for adj in adjs:
        for other in others:
            out += [(f"{adj}, not {other}", "NG1"), (f"{adj} rather than {other}", "NG2")]
            out += [(f"{s.np} who is not {other} but {adj}", "NG3") for s in SUBJECTS]
            out += [(f"{s.np} looking {adj} and not at all {other}", "NG4") for s in SUBJECTS]
    return out


def mixed_texts(spec: dict) -> list[tuple[str, str]]:
    out = []
    for s in SUBJECTS:
        for a1, a2 in spec["pairs"]:
            if s.noun and spec.get("blend", True):  # "a happy-surprised person" only for emotion blends
                out.append((f"{article(a1)} {a1}-{a2} {s.noun}", "M1"))
            out += [(f"{s.np} who is both {a1} and {a2}", "M2"), (f"{s.np} looking {a1} and {a2}", "M3"),
                    (f"{s.np} who seems {a1} yet {a2}", "M4")]
        for adv, adj in spec["adv_pairs"]:
            out += [(f"{s.np} who is {adv} {adj}", "M5"), (f"{s.np} looking {adv} {adj}", "M5b")]
            if s.noun:
                out.append((f"{article(adv)} {adv} {adj} {s.noun}", "M5c"))
        for name in spec["names"]:
            if s.noun:
                out.append((f"{article(name)} {name} {s.noun}", "M6"))
            out += [(f"{s.np} who looks {name}", "M7"), (f"{s.np} with {with_article(name)} expression", "M8")]
        for n1, n2 in spec["nouns"]:
            if spec.get("blend", True):
                out += [(f"{s.np} feeling {n1} mixed with {n2}", "M9"), (f"{s.np} showing both {n1} and {n2}", "M10")]
            else:  # a single state: the two nouns are near-synonyms
                out += [(f"{s.np} full of {n1}", "M9"), (f"{s.np} showing {n2}", "M10")]
    for s in PRONOUNS:
        out += [(f"{s.np} is both {a1} and {a2}", "P1") for a1, a2 in spec["pairs"]]
        out += [(f"{s.np} is {adv} {adj}", "P2") for adv, adj in spec["adv_pairs"]]
        out += [(f"{s.np} looks {name}", "P3") for name in spec["names"]]
    # subject-free
    out += [(f"{a1} and {a2}", "B1") for a1, a2 in spec["pairs"]] + [(f"{adv} {adj}", "B2")
                                                                       for adv, adj in spec["adv_pairs"]]
    out += [(name, "B3") for name in spec["names"]] + [(f"looking {name}", "B4") for name in spec["names"]]
    if spec.get("blend", True):
        out += [(f"{n1} mixed with {n2}", "B5") for n1, n2 in spec["nouns"]]
    return out


def _fill(template: str, subject: Subject, intensity: str = "") -> str:
    return template.replace("{p}", subject.poss).replace("{i}", intensity).replace("{np}", subject.np)


def _feature(action: Action, idx: int, subject: Subject, intensity: str = "") -> str:
    return _fill(action.features[idx % len(action.features)], subject, intensity)


def action_texts(action: Action) -> list[tuple[str, str]]:
    out = []
    for s in SUBJECTS:
        for fi, feat in enumerate(action.features):
            for inten in ACTION_INTENSITY if "{i}" in feat else ("",):
                out.append((f"{s.np} with {_fill(feat, s, inten)}", f"F{fi}"))
        for vi, (verb, ving) in enumerate(action.verbs):
            out += [(f"{s.np} {_fill(verb, s)}", f"V{vi}"), (f"{s.np} {_fill(ving, s)}", f"G{vi}")]
    for s in PRONOUNS:
        out += [(f"{s.np} {_fill(verb, s)}", f"P{vi}") for vi, (verb, _) in enumerate(action.verbs)]
    for fi, feat in enumerate(action.features):  # subject-free
        for inten in ACTION_INTENSITY if "{i}" in feat else ("",):
            out.append((_fill(feat, BARE, inten), f"BF{fi}"))
    for vi, (verb, ving) in enumerate(action.verbs):
        out += [(_fill(verb, BARE), f"BV{vi}"), (_fill(ving, BARE), f"BG{vi}")]
    # negated actions are absent: "..., not smiling" is this action only
    for no_aus, clause in ((("AU12",), "not smiling"), (("AU45", "AU05"), "without blinking")):
        if not set(no_aus) & set(action.aus):
            out += [(f"{_fill(f, BARE)}, {clause}", "NG1") for f in action.features if "{i}" not in f]
            out += [(f"{s.np} {_fill(ving, s)}, {clause}", "NG2") for s in SUBJECTS for _, ving in action.verbs]
    return out


def named_texts(templates: tuple[str, ...]) -> list[tuple[str, str]]:
    out = [(_fill(t, s), f"T{ti}") for s in SUBJECTS for ti, t in enumerate(templates)]
    for ti, t in enumerate(templates):  # subject-free: "{np} with a poker face" -> "a poker face"
        bare = _fill(t.replace("{np} ", ""), BARE)
        out.append((bare.removeprefix("with "), f"B{ti}"))
    return out


def combo_texts(actions: list[Action], rng: random.Random) -> list[tuple[str, str]]:
    """Descriptions of several simultaneous actions (different regions)."""
    out = []
    for s in SUBJECTS:
        feats = [_feature(a, rng.randrange(len(a.features)), s, rng.choice(ACTION_INTENSITY)) for a in actions]
        verbs = [a.verbs[rng.randrange(len(a.verbs))] for a in actions]
        v3 = [_fill(v[0], s) for v in verbs]
        vg = [_fill(v[1], s) for v in verbs]
        out += [(f"{s.np} with {join_and(feats)}", "C1"), (f"{s.np} who {join_and(v3)}", "C2"),
                (f"{s.np} {join_and(vg)}", "C3"),
                (f"{s.np} with {join_and(feats[:-1])}, {vg[-1]}", "C4")]
    for s in PRONOUNS:
        verbs = [a.verbs[rng.randrange(len(a.verbs))] for a in actions]
        out.append((f"{s.np} {join_and([_fill(v[0], s) for v in verbs])}", "P1"))
    for _ in range(2):  # subject-free
        feats = [_feature(a, rng.randrange(len(a.features)), BARE, rng.choice(ACTION_INTENSITY)) for a in actions]
        verbs = [a.verbs[rng.randrange(len(a.verbs))] for a in actions]
        out += [(join_and(feats), "B1"), (join_and([_fill(v[0], BARE) for v in verbs]), "B2"),
                (join_and([_fill(v[1], BARE) for v in verbs]), "B3")]
    return out


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# Decomposition of an AU set into action features for the "anatomical" paraphrase of emotions.
_DECOMPOSE_ORDER = ("brow_raise", "jaw_drop") + tuple(
    a.key for a in ACTIONS if a.key not in ("brow_raise", "jaw_drop"))


def anatomical_text(aus: tuple[str, ...], subject: Subject, rng: random.Random) -> str:
    left = set(aus)
    feats = []
    for key in _DECOMPOSE_ORDER:
        a = ACTION[key]
        if set(a.aus) <= left:
            left -= set(a.aus)
            feats.append(_feature(a, rng.randrange(len(a.features)), subject))
    assert not left, f"cannot describe {left}"
    return f"{subject.np} with {join_and(feats)}"


# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


@dataclass
class Concept:
    key: str
    type: str
    aus: tuple[str, ...]
    candidates: list[tuple[str, str]]  # (text, template id), shuffled
    count: int
    contrast: tuple[str, ...] = ()
    # lexicon words of the concept: each gets at least one anchor before the other picks (v3),
    # so no synonym of the tables is left out of the data by the random pick
    words: tuple[str, ...] = ()


class Builder:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.concepts: list[Concept] = []
        self.by_key: dict[str, Concept] = {}

    def add(self, c: Concept) -> None:
        self.rng.shuffle(c.candidates)
        self.concepts.append(c)
        self.by_key[c.key] = c  # contrast keys name the base level ("sadness", not "sadness@slight")

    def collect(self) -> None:
        rng = self.rng
        for name, spec in BASIC.items():
            for level, aus in spec["levels"].items():
                count = CONTEMPT_COUNT if name == "contempt" else BASIC_COUNTS[level]
                key = name if level == "base" else f"{name}@{level}"
                words = tuple(w for w, wl in spec["adjs"] + spec["nouns"] + spec.get("idioms", ()) if wl == level)
                count = max(count, len(words) + COVER_EXTRA)
                texts = emotion_texts(spec, level, rng)
                if level == "base":
                    others = [w for c in spec["contrast"] if c in BASIC for w, wl in BASIC[c]["adjs"][:3]
                              if wl == "base"]
                    texts += negated_texts(spec, others)
                self.add(Concept(key, "basic emotion", aus, texts, count, spec["contrast"], words))
            if name in SITUATIONS:
                self.add(Concept(f"{name}-situation", "basic emotion", spec["levels"]["base"],
                                 situation_texts(SITUATIONS[name]), SITUATION_COUNT, spec["contrast"]))
        for name, spec in MIXED.items():
            self.add(Concept(name, "mixed emotion", spec["aus"], mixed_texts(spec), MIXED_COUNT, spec["contrast"],
                             tuple(spec["names"])))
        for a in ACTIONS:
            self.add(Concept(a.key, "simple expression", a.aus, action_texts(a), SIMPLE_COUNT))
        for key, aus, templates in NAMED_COMBOS:
            typ = "complex combination" if len(aus) > 1 else "simple expression"
            self.add(Concept(key, typ, aus, named_texts(templates), NAMED_COUNT))
        for i, acts in enumerate(self.sample_combos(2, PAIR_COUNT) + self.sample_combos(3, TRIPLE_COUNT)):
            aus = tuple(sorted({u for a in acts for u in a.aus}))
            key = "+".join(a.key for a in acts)
            self.add(Concept(key, "complex combination", aus, combo_texts(acts, rng), 1))

    def sample_combos(self, k: int, n: int) -> list[list[Action]]:
        """``n`` distinct k-action combinations, one action per region, anatomically compatible."""
        regions: dict[str, list[Action]] = {}
        for a in ACTIONS:
            regions.setdefault(a.region, []).append(a)
        names = sorted(regions)
        combos = []

        def rec(start: int, chosen: list[Action]):
            if len(chosen) == k:
                combos.append(list(chosen))
                return
            for ri in range(start, len(names)):
                for a in regions[names[ri]]:
                    rec(ri + 1, chosen + [a])

        rec(0, [])
        combos = [c for c in combos if compatible(c)]
        self.rng.shuffle(combos)
        return combos[:n]


def compatible(actions: list[Action]) -> bool:
    keys = {a.key for a in actions}
    aus = {u for a in actions for u in a.aus}
    # outer brow raise alone is rare; keep it for single-action entries only
    if "outer_brow_raise" in keys:
        return False
    # closed eyes cannot co-occur with raised upper lids / a wide stare
    if "AU45" in aus and "AU05" in aus:
        return False
    # the nose wrinkler pulls the brows down: do not pair it with raised brows
    if "AU09" in aus and ("AU01" in aus or "AU02" in aus):
        return False
    # cheek raise with downturned or pressed mouth reads as pain/crying, not a plain combination
    return not ("AU06" in aus and aus & {"AU15", "AU24", "AU23"})


class Selector:
    """Picks anchors, positives and negatives; rejects near-duplicate descriptions."""

    def __init__(self, builder: Builder, seed: int):
        self.b = builder
        self.rng = random.Random(seed + 1)
        self.descs: list[str] = []
        self.desc_norms: set[str] = set()
        self.desc_sets: list[frozenset[str]] = []
        self.chosen: list[tuple[Concept, str, str]] = []  # concept, text, template
        self.held_out = held_out_sentences()

    def near_dup(self, text: str) -> bool:
        n = normalize_text(text)
        if n in self.desc_norms or n in self.held_out:
            return True
        ts = token_set(text)
        return any(jaccard(ts, o) >= NEAR_DUP_JACCARD for o in self.desc_sets)

    def take(self, concept: Concept, text: str, tmpl: str) -> None:
        self.descs.append(text)
        self.desc_norms.add(normalize_text(text))
        self.desc_sets.append(token_set(text))
        self.chosen.append((concept, text, tmpl))

    def pick_anchors(self) -> None:
        for c in self.b.concepts:
            used_templates: set[str] = set()
            used_subjects: set[str] = set()
            picked = 0
            for word in c.words:  # one anchor per lexicon word first, each in a template not yet used
                pattern = re.compile(rf"(?<![\w-]){re.escape(word)}(?![\w-])")
                having = [(t, tm) for t, tm in c.candidates if pattern.search(t)]
                having.sort(key=lambda x: x[1] in used_templates)  # stable: keeps the shuffle order
                for text, tmpl in having:
                    if any(text == t for _, t, _ in self.chosen) or self.near_dup(text):
                        continue
                    self.take(c, text, tmpl)
                    used_templates.add(tmpl)
                    used_subjects.add(next((s.np for s in ALL_SUBJECTS if text.startswith(s.np + " ")), ""))
                    picked += 1
                    break
            # prefer unseen templates and subjects; relax when they run out
            for strict in (2, 1, 0):
                for text, tmpl in c.candidates:
                    if picked >= c.count:
                        break
                    subj = next((s.np for s in ALL_SUBJECTS if text.startswith(s.np + " ")), "")
                    if strict >= 1 and tmpl in used_templates:
                        continue
                    if strict >= 2 and subj in used_subjects:
                        continue
                    if any(text == t for _, t, _ in self.chosen) or self.near_dup(text):
                        continue
                    self.take(c, text, tmpl)
                    used_templates.add(tmpl)
                    used_subjects.add(subj)
                    picked += 1

    def free(self, text: str) -> bool:
        """Positives / negatives never equal any anchor description (no leakage across splits) nor a
        hold-out sentence."""
        return normalize_text(text) not in self.desc_norms and normalize_text(text) not in self.held_out

    def positives(self, c: Concept, anchor: str, tmpl: str) -> list[str]:
        out: list[str] = []
        if c.type in ("basic emotion", "mixed emotion"):
            for _ in range(10):
                t = anatomical_text(c.aus, self.rng.choice(SUBJECTS), self.rng)
                if self.free(t):
                    out.append(t)
                    break
        pool = [(t, tm) for t, tm in c.candidates if t != anchor and self.free(t)]
        self.rng.shuffle(pool)
        pool.sort(key=lambda x: x[1] == tmpl)  # other templates first (stable: keeps shuffle order)
        for t, _ in pool:
            if len(out) == 3:
                break
            if all(normalize_text(t) != normalize_text(o) for o in out):
                out.append(t)
        if len(out) < 3:
            raise RuntimeError(f"not enough paraphrases for {c.key}")
        return out

    def negatives(self, c: Concept) -> list[str]:
        anchor_aus = set(c.aus)
        explicit = [self.b.by_key[k] for k in c.contrast if k in self.b.by_key]
        others = [o for o in self.b.concepts if au_jaccard(anchor_aus, set(o.aus)) <= 0.2]
        self.rng.shuffle(others)
        sources = explicit[:2] + others
        out: list[str] = []
        used = set()
        for o in sources:
            if len(out) == 2 or o.key in used:
                continue
            if au_jaccard(anchor_aus, set(o.aus)) > 0.34:
                continue
            cand = [t for t, _ in o.candidates if self.free(t)]
            if cand:
                out.append(self.rng.choice(cand))
                used.add(o.key)
        # one more from a third concept or a neutral face
        rest = [o for o in sources if o.key not in used and au_jaccard(anchor_aus, set(o.aus)) <= 0.2]
        if rest and self.rng.random() < 0.75:
            cand = [t for t, _ in rest[0].candidates if self.free(t)]
            out.append(self.rng.choice(cand))
        else:
            out.append(self.rng.choice(NEUTRAL_NEGATIVES))
        return out


def held_out_sentences() -> set[str]:
    """Normalised sentences of the hand-written sets (hold-out and written): never emitted by the
    templates, so a plain word that happens to be a hold-out prompt ("scornful") stays out of the
    data set, and a written sentence is in it once, with its writer's labels (the tests check this)."""
    paths = sorted(DATA_DIR.glob(HOLDOUT_GLOB)) + sorted(DATA_DIR.glob(WRITTEN_GLOB))
    return {normalize_text(item.text) for path in paths for item in load_labelled_texts(path)}


# --------------------------------------------------------------------------------------------
# v5: hand-written sentences as entries
# --------------------------------------------------------------------------------------------

# a written sentence's type from its writer's style tag (types only stratify the report)
EMOTION_STYLES = frozenset({"emotion", "intensity", "situation", "idiom", "everyday"})


def describable(aus: tuple[str, ...]) -> bool:
    """Whether ``anatomical_text`` can word this AU set (the single actions cover it)."""
    try:
        anatomical_text(aus, SUBJECTS[0], random.Random(0))
    except AssertionError:
        return False
    return True


def written_type(aus: tuple[str, ...], style: str) -> str:
    if len(aus) <= 1:
        return "simple expression"
    return "basic emotion" if style in EMOTION_STYLES else "complex combination"


def written_sets() -> dict[str, Path]:
    """The ``written_*`` files by tag (``written_s29.jsonl`` -> ``s29``), in file-name order."""
    return {p.stem.removeprefix("written_"): p for p in sorted(DATA_DIR.glob(WRITTEN_GLOB))}


def written_entries(templates: list[Entry], sel: Selector, without: frozenset[str] = frozenset()) -> list[Entry]:
    """Every sentence of the ``written_*`` sets (but those named in ``without``) as an entry with
    its writer's labels. Its positives are paraphrases with the same AU set: template positives
    of an entry coded alike, else anatomical descriptions of the set (``anatomical_text``);
    negatives come from entries whose AUs barely overlap (Jaccard <= 0.2), as for the templates.
    Each sentence is its own concept; ``concept_folds`` still keeps an AU vector in one fold."""
    rng = sel.rng
    by_aus: dict[tuple[int, ...], list[str]] = {}
    for e in templates:
        pool = by_aus.setdefault(e.aus, [])
        pool += [p for p in e.positives if p not in pool]
    out = []
    for tag, path in written_sets().items():
        if tag in without:
            continue
        for i, item in enumerate(load_labelled_texts(path), 1):
            names = tuple(a for a, v in zip(AU_NAMES, item.aus) if v)
            positives = rng.sample(by_aus[item.aus], 3) if len(by_aus.get(item.aus, ())) >= 3 else []
            if not positives and not describable(names):
                continue  # AU26 without AU25: no template codes it that way, so no paraphrase (2 sentences)
            for _ in range(30):
                if len(positives) == 3:
                    break
                t = anatomical_text(names, rng.choice(SUBJECTS), rng)
                if t not in positives and sel.free(t):
                    positives.append(t)
            if len(positives) < 3:
                raise RuntimeError(f"{path.name} line {i}: cannot paraphrase {names}")
            far = [e for e in templates if au_jaccard(set(names), set(e.au_names)) <= 0.2 and e.aus != item.aus]
            negatives: list[str] = []
            while len(negatives) < 3:
                t = rng.choice(rng.choice(far).positives)
                if t not in negatives:
                    negatives.append(t)
            out.append(Entry(id=f"written-{tag}-{i:03d}-01", description=item.text, type=written_type(names, item.style),
                             aus=item.aus, positives=tuple(positives), negatives=tuple(negatives)))
    return out


def au_jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


PREFIX = {"basic emotion": "emo", "mixed emotion": "mix", "simple expression": "act", "complex combination": "combo"}


def build(seed: int = 0, without: frozenset[str] = frozenset()) -> list[Entry]:
    b = Builder(seed)
    b.collect()
    sel = Selector(b, seed)
    sel.pick_anchors()
    entries = []
    counters: dict[str, int] = {}
    for c, text, tmpl in sel.chosen:
        base = c.key.replace("@", "-").replace("+", "-")
        counters[base] = counters.get(base, 0) + 1
        eid = f"{PREFIX[c.type]}-{base}-{counters[base]:02d}"
        entries.append(Entry(id=eid, description=text, type=c.type, aus=tuple(au_vector_from_names(c.aus)),
                             positives=tuple(sel.positives(c, text, tmpl)), negatives=tuple(sel.negatives(c))))
    return entries + written_entries(entries, sel, without)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(DEFAULT_DATA))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--without", action="append", default=[], metavar="TAG",
                    help="leave the written set written_TAG.jsonl out (leave-one-set-out evaluation); repeatable")
    args = ap.parse_args()
    known = written_sets()
    if set(args.without) - set(known):
        ap.error(f"--without: no written set {sorted(set(args.without) - set(known))}; known: {', '.join(sorted(known))}")
    entries = build(args.seed, frozenset(args.without))
    write_entries(entries, args.out)
    by_type: dict[str, int] = {}
    for e in entries:
        by_type[e.type] = by_type.get(e.type, 0) + 1
    print(f"wrote {len(entries)} entries to {args.out}: {by_type}")


if __name__ == "__main__":
    main()
