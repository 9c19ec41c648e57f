"""Random sentences in several languages for the text-to-speech voices (``tts.py``).

Sentences follow a small subject–verb–object–(place/time) grammar per language so the prosody
espeak-ng produces is that of real sentences, not word lists. Mandarin is written in tone-numbered
pinyin (espeak-ng's ``cmn-latn-pinyin`` voice: its Mandarin dictionary lacks most hanzi), Japanese
in kana, Russian in Cyrillic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Language:
    code: str  # short name stored in meta.json
    voice: str  # espeak-ng voice
    subjects: tuple[str, ...]
    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    tails: tuple[str, ...]
    order: str = "svot"  # word order of the grammar (s, v, o, t)
    sep: str = " "
    end: str = "."


LANGUAGES: dict[str, Language] = {lang.code: lang for lang in (
    Language("en", "en-us",
             ("my brother", "the old teacher", "we", "nobody", "a small child", "our neighbours", "she"),
             ("bought", "painted", "found", "will move", "cannot forget", "loves", "borrowed", "watched"),
             ("a blue boat", "the broken window", "five yellow apples", "the morning news", "a warm coat",
              "that funny movie", "my purple umbrella"),
             ("yesterday", "in the garden", "before lunch", "every summer", "by the river", "at midnight", "")),
    Language("es", "es",
             ("mi hermano", "la profesora", "nosotros", "nadie", "un niño pequeño", "los vecinos", "ella"),
             ("compró", "pintó", "encontró", "va a mover", "no olvida", "quiere", "miraba"),
             ("un barco azul", "la ventana rota", "cinco manzanas", "las noticias", "un abrigo viejo",
              "la película", "mi paraguas"),
             ("ayer", "en el jardín", "antes de comer", "cada verano", "junto al río", "por la mañana", "")),
    Language("de", "de",
             ("mein Bruder", "die alte Lehrerin", "wir", "niemand", "ein kleines Kind", "die Nachbarn", "sie"),
             ("kaufte", "malte", "fand", "vergisst nie", "liebt", "borgte", "sah"),
             ("ein blaues Boot", "das kaputte Fenster", "fünf Äpfel", "die Nachrichten", "einen warmen Mantel",
              "den lustigen Film", "meinen Regenschirm"),
             ("gestern", "im Garten", "vor dem Essen", "jeden Sommer", "am Fluss", "um Mitternacht", "")),
    Language("cmn", "cmn-latn-pinyin",
             ("wo3 ge1 ge5", "lao3 shi1", "wo3 men5", "ta1", "xiao3 peng2 you3", "lin2 ju1 men5"),
             ("mai3 le5", "hua4 le5", "zhao3 dao4 le5", "xi3 huan1", "kan4 le5", "jie4 le5"),
             ("yi1 tiao2 lan2 se4 de5 chuan2", "po4 chuang1 hu4", "wu3 ge4 ping2 guo3", "xin1 wen2",
              "yi1 jian4 da4 yi1", "na4 bu4 dian4 ying3"),
             ("zuo2 tian1", "zai4 hua1 yuan2 li3", "wu3 fan4 qian2", "mei3 ge4 xia4 tian1", "ban4 ye4", ""),
             order="tsvo", end=""),
    Language("ja", "ja",
             ("わたしの あには", "せんせいは", "わたしたちは", "こどもは", "となりの ひとは", "かのじょは"),
             ("かいました", "ぬりました", "みつけました", "すきです", "みました", "かりました"),
             ("あおい ふねを", "まどを", "りんごを いつつ", "ニュースを", "あたたかい コートを", "えいがを"),
             ("きのう", "にわで", "ひるごはんの まえに", "まいとし なつに", "かわの そばで", "よなかに", ""),
             order="tsov", sep=" ", end="。"),
    Language("ru", "ru",
             ("мой брат", "старая учительница", "мы", "никто", "маленький ребёнок", "соседи", "она"),
             ("купил", "покрасил", "нашёл", "любит", "смотрел", "взял"),
             ("синюю лодку", "разбитое окно", "пять яблок", "новости", "тёплое пальто", "смешной фильм"),
             ("вчера", "в саду", "перед обедом", "каждое лето", "у реки", "в полночь", "")),
)}


def random_sentence(language: str, rng: np.random.Generator) -> str:
    lang = LANGUAGES[language]
    pick = {k: str(rng.choice(getattr(lang, name))) for k, name in
            (("s", "subjects"), ("v", "verbs"), ("o", "objects"), ("t", "tails"))}
    words = [pick[k] for k in lang.order if pick[k]]
    text = lang.sep.join(words)
    return text[:1].upper() + text[1:] + lang.end
