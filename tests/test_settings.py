"""The one settings schema: bundle JSON round trips, options on every command, checks."""

import argparse
import json
from dataclasses import fields

import pytest

from lass import Ancestral, BeamSearch, Greedy, TopK, TopP
from lass.cli.evaluate import _parser as evaluate_parser
from lass.cli.make_bundle import _parser as make_bundle_parser
from lass.cli.separate import _parser as separate_parser
from lass.errors import LassError
from lass.settings import (
    SCHEMA,
    SETTINGS_SCHEMA,
    SeparationSettings,
    apply_options,
    given_options,
    settings_from_bundle,
    settings_to_bundle,
)

VARIED = [
    SeparationSettings(),
    SeparationSettings(sampler=Ancestral(1.5, 0.25), lam=5.0, candidates=2, combine="mean",
                       rerank_top=3, output="decode", mask_fft=8192, mask_iterations=1,
                       refine_steps=0, refine_lr=0.02, refine_penalty=0.0, seed=3,
                       context_overlap=128, prior_top=27, shifts=5, evidence_weight=1.0),
    SeparationSettings(sampler=TopK(8, 0.7), context_overlap=None),
    SeparationSettings(sampler=TopP(0.5, 2.0), refine_steps=30),
    SeparationSettings(sampler=Greedy()),
    SeparationSettings(sampler=BeamSearch(3)),
]


@pytest.mark.parametrize("settings", VARIED)
def test_bundle_json_round_trips(settings):
    entry = settings_to_bundle(settings)
    assert settings_from_bundle(json.loads(json.dumps(entry))) == settings
    # every setting is written, so a bundle says everything it does
    assert {s.key for s in SETTINGS_SCHEMA} <= set(entry)
    recorded = settings.to_json()  # the form separation.json records
    assert recorded["sampler"]["kind"] == entry["kind"]
    assert {k: v for k, v in recorded.items() if k != "sampler"} == {
        s.key: entry[s.key] for s in SETTINGS_SCHEMA}


def test_every_setting_is_a_field_and_an_option_of_make_bundle_and_separate():
    names = {f.name for f in fields(SeparationSettings)} - {"sampler"}
    assert names == {s.key for s in SETTINGS_SCHEMA}
    for parser in (make_bundle_parser(), separate_parser()):
        flags = {o for a in parser._actions for o in a.option_strings}
        assert {s.flag for s in SCHEMA} <= flags
    evaluate_flags = {o for a in evaluate_parser()._actions for o in a.option_strings}
    assert {"--lam", "--shifts", "--mask-fft", "--evidence-weight", "--refine"} <= evaluate_flags


def test_options_apply_over_a_base():
    base = SeparationSettings(sampler=Ancestral(1.5), candidates=2, shifts=5)
    p = separate_parser()
    args = p.parse_args(["x.wav", "--temperature", "2", "--lam", "4"])
    s = apply_options(base, given_options(args))
    assert (s.sampler, s.lam, s.candidates, s.shifts) == (Ancestral(2.0), 4.0, 2, 5)
    # a new kind keeps the base's values only where it is the same kind
    s = apply_options(base, given_options(p.parse_args(["x.wav", "--sampler", "topk"])))
    assert s.sampler == TopK()
    s = apply_options(base, given_options(p.parse_args(["x.wav", "--beams", "4"])))
    assert s.sampler == BeamSearch(4)
    with pytest.raises(LassError, match="--top-k does not apply to this bundle's sampler"):
        apply_options(base, given_options(p.parse_args(["x.wav", "--top-k", "4"])))
    with pytest.raises(LassError, match="--temperature does not apply to --sampler beam"):
        apply_options(base, given_options(p.parse_args(["x.wav", "--sampler", "beam",
                                                        "--temperature", "2"])))


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "beam", "num_beams": 0}, "num_beams must be at least 1, not 0"),
    ({"kind": "topp", "p": 1.5}, "p must be in (0, 1], not 1.5"),
    ({"kind": "ancestral", "temperature": 0}, "temperature must be positive, not 0"),
    ({"lam": -1}, "lam must be >= 0, not -1"),
    ({"lam": "high"}, "lam must be a number, not 'high'"),
    ({"combine": "median"}, "combine must be one of best, rerank, mean, not 'median'"),
    ({"shifts": 2.5}, "shifts must be an integer, not 2.5"),
    ({"kind": "nucleus"}, "kind must be one of beam, greedy, ancestral, topk, topp"),
    ({"beams": 3}, "unknown key(s) in the bundle's sampler: beams"),
])
def test_bundle_values_out_of_range_are_named(entry, message):
    with pytest.raises(LassError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings_from_bundle(entry)


def test_command_line_values_out_of_range_name_the_flag():
    args = argparse.Namespace(**{s.flag[2:].replace("-", "_"): None for s in SCHEMA})
    args.shifts = 0
    with pytest.raises(LassError, match="--shifts must be at least 1, not 0"):
        given_options(args)
