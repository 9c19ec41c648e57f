"""``emodifftalk text2au {check-data,train,cv,predict,eval}``: the Text-to-AU emotion controller.

  check-data [--data FILE] [--json]                         validate a data file (exit 1 on errors)
  train --out DIR [--data FILE] [--config tiny] [k=v ...]   train on the shipped data (epoch schedule)
  cv --out DIR [--folds 5] [--data FILE] [k=v ...]          concept cross-validation (+ paraphrase split)
  predict --model DIR --text T [--text T2] [--input FILE] [--json]
  eval --model DIR [--data FILE] [--split test] [--out FILE]
  eval --model DIR --texts [FILE]                           labelled texts (default: the hold-out set)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from emodifftalk.cli import add_config_args, config_from_args


def register(subparsers) -> None:
    p = subparsers.add_parser("text2au", help="Text-to-AU emotion controller: data check, train, predict, eval",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="text2au_cmd", metavar="COMMAND")
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    c = sub.add_parser("check-data", help="validate a Text-to-AU JSONL data file")
    c.add_argument("--data", default=None, help="JSONL file (default: the shipped data set)")
    c.add_argument("--split-seed", type=int, default=0)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_check_data)

    t = sub.add_parser("train", help="train the controller (writes DIR/export/model.safetensors + config.json)")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--data", default=None, help="JSONL file (default: the shipped data set)")
    t.add_argument("--resume", default=None, metavar="latest|PATH")
    t.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads while optimising the small head (default 1: faster on CPU)")
    add_config_args(t)
    t.set_defaults(func=run_train)

    v = sub.add_parser("cv", help="cross-validation over concepts: train a K-fold cross-fitted model, print the "
                                  "out-of-concept metrics next to the paraphrase split")
    v.add_argument("--out", required=True, help="run directory")
    v.add_argument("--folds", type=int, default=5, help="concept folds (= ensemble members, text2au.members)")
    v.add_argument("--data", default=None, help="JSONL file (default: the shipped data set)")
    v.add_argument("--threads", type=int, default=1)
    add_config_args(v)
    v.set_defaults(func=run_cv)

    r = sub.add_parser("predict", help="AU probabilities for text prompts")
    r.add_argument("--model", required=True, help="export dir (or run dir) of a trained controller")
    r.add_argument("--text", action="append", default=[], help="a description; repeat for several")
    r.add_argument("--input", default=None, help="file with one description per line")
    r.add_argument("--threshold", type=float, default=None, help="override the exported decision threshold")
    r.add_argument("--json", action="store_true", help="one JSON object per line")
    r.set_defaults(func=run_predict)

    e = sub.add_parser("eval", help="accuracy / precision / recall / F1 on a split, as JSON")
    e.add_argument("--model", required=True)
    e.add_argument("--data", default=None, help="JSONL file (default: the one the model was trained on)")
    e.add_argument("--split", default="test", choices=("train", "val", "test", "all"))
    e.add_argument("--texts", nargs="?", const="", default=None, metavar="FILE",
                   help="evaluate on labelled texts instead (JSONL text/aus/style; no FILE: the shipped "
                        "hand-written hold-out set)")
    e.add_argument("--out", default=None, help="also write the JSON here")
    e.set_defaults(func=run_eval)


def run_check_data(args) -> int:
    from emodifftalk.text2au.validate import check_data

    report = check_data(args.data, split_seed=args.split_seed)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.format())
    return 0 if report.ok else 1


def run_train(args) -> int:
    from emodifftalk.train.tasks.text2au import train_text2au

    cfg = config_from_args(args)
    summary = train_text2au(cfg, args.out, data=args.data, resume=args.resume, threads=args.threads)
    print(json.dumps(summary, indent=2))
    return 0


def run_cv(args) -> int:
    from emodifftalk.train.tasks.text2au import train_text2au

    if args.folds < 2:
        raise ValueError(f"--folds must be >= 2, got {args.folds}")
    args.overrides = list(args.overrides) + [f"text2au.members={args.folds}"]
    cfg = config_from_args(args)
    summary = train_text2au(cfg, args.out, data=args.data, threads=args.threads)
    cv, para = summary["concept_cv"], summary["metrics"]
    print(json.dumps({"concept_cv": cv, "paraphrase_split": para, "export_dir": summary["export_dir"]}, indent=2))
    return 0


def _read_texts(args) -> list[str]:
    texts = list(args.text)
    if args.input:
        path = Path(args.input)
        if not path.is_file():
            raise FileNotFoundError(f"--input file {path} does not exist")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not texts:
        raise ValueError("give at least one --text or an --input file")
    return texts


def run_predict(args) -> int:
    from emodifftalk.text2au.predict import Text2AU

    texts = _read_texts(args)
    results = Text2AU.load(args.model).predict(texts, threshold=args.threshold)
    for r in results:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        else:
            top = ", ".join(f"{a} {r['probs'][a]:.2f}" for a in r["aus"]) or "none"
            print(f"{r['text']}\n  -> {top}")
    sys.stdout.flush()
    return 0


def run_eval(args) -> int:
    from emodifftalk.text2au.evaluate import evaluate_model
    from emodifftalk.utils import atomic_write_text

    if args.texts is not None:
        from emodifftalk.text2au.evaluate import evaluate_texts

        result = evaluate_texts(args.model, args.texts or None)
    else:
        result = evaluate_model(args.model, data=args.data, split=args.split)
    text = json.dumps(result, indent=2)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return 0
