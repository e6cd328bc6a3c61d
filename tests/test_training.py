import importlib
import itertools
import json
import math

import pytest
import torch

import pipeline
from pipeline import artifacts
from pipeline.errors import ModelLoadError, TrainingDiverged, WordError


def test_tiny_config_trains_and_reports_every_figure(tiny_run):
    result, reports = tiny_run
    assert [r.epoch for r in reports] == [1]
    figures = reports[0].figures
    for key in (
        "loss",
        "recon",
        "kl",
        "beta",
        "teacher_forcing",
        "bleu4",
        "gaussian_score",
        "seconds",
    ):
        assert key in figures and figures[key] == figures[key]  # present and not NaN
    assert 0.0 <= figures["bleu4"] <= 1.0
    assert result.history == [figures]


def test_same_seed_same_figures(tiny_config, tiny_run):
    again = pipeline.train(tiny_config)
    drop = {"seconds", "words_per_s"}
    strip = [{k: v for k, v in h.items() if k not in drop} for h in again.history]
    assert strip == [{k: v for k, v in h.items() if k not in drop} for h in tiny_run[0].history]


@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"prior_weight": 1.0, "prior_refresh": 3},
        {"hard_pairs": 0.25},
        {"hard_pairs": 0.25, "hard_pairs_attend": True},
        {"ema": 0.9},
    ],
)
def test_resume_from_a_checkpoint_equals_an_uninterrupted_run(tiny_config, extra):
    cfg = tiny_config.replace(train={"epochs": 2, "eval_gaussian_draws": 0, **extra})
    full = pipeline.train(cfg)
    saved = []
    pipeline.train(
        cfg,
        on_epoch=lambda r: saved.append(r.checkpoint()) if r.epoch == 1 else None,
        should_stop=lambda: len(saved) > 0,
    )
    resumed = pipeline.train(cfg, resume=saved[0])
    drop = {"seconds", "words_per_s"}
    assert [{k: v for k, v in h.items() if k not in drop} for h in resumed.history] == [
        {k: v for k, v in h.items() if k not in drop} for h in full.history
    ]
    for a, b in zip(
        full.model.state_dict().values(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b)


def test_the_weights_moving_average_follows_each_step(tiny_config):
    from pipeline.data import batches, load_train
    from pipeline.training import Trainer

    trainer = Trainer(tiny_config.replace(train={"ema": 0.8}), load_train(), torch.device("cpu"))
    params = list(trainer.model.parameters())
    want = [p.detach().clone() for p in params]
    gen = torch.Generator().manual_seed(0)
    for b in list(batches(trainer.pairs, trainer.model.vocab, 16, gen))[:3]:
        trainer.train_step(b)
        want = [0.8 * w + 0.2 * p.detach() for w, p in zip(want, params, strict=True)]
    trained = [p.detach().clone() for p in params]
    for a, w in zip(trainer.ema, want, strict=True):
        torch.testing.assert_close(a, w)
    assert not all(torch.equal(a, w) for a, w in zip(trainer.ema, trained, strict=True))
    with trainer.averaged():
        assert all(torch.equal(p, a) for p, a in zip(params, trainer.ema, strict=True))
    assert all(torch.equal(p, w) for p, w in zip(params, trained, strict=True))


def test_training_scores_and_hands_back_the_moving_average(tiny_config):
    from pipeline.data import load_test
    from pipeline.evaluate import bleu_on

    plain = pipeline.train(tiny_config.replace(train={"eval_gaussian_draws": 0}))
    averaged = pipeline.train(tiny_config.replace(train={"eval_gaussian_draws": 0, "ema": 0.8}))
    # the steps run on the trained weights either way
    assert averaged.history[-1]["loss"] == plain.history[-1]["loss"]
    assert not torch.equal(averaged.model.out.weight, plain.model.out.weight)
    assert averaged.history[-1]["bleu4"] == bleu_on(averaged.model, load_test())["bleu4"]


def test_scoring_every_epoch_leaves_the_weights_as_they_were(tiny_config):
    """A run scored every epoch on twenty Gaussian draws (benchmarks/quality.py's curves)
    trains the very weights a run scored only at its end does: scoring draws from its own
    generators, never from training's or torch's global one."""
    base = {"epochs": 2, "prior_weight": 1.0, "ema": 0.9, "val_fraction": 0.1}
    quiet = pipeline.train(
        tiny_config.replace(train={**base, "eval_every": 100, "eval_gaussian_draws": 0})
    )
    scored = pipeline.train(
        tiny_config.replace(train={**base, "eval_every": 1, "eval_gaussian_draws": 20})
    )
    assert "gaussian_score" in scored.history[0] and "gaussian_score" not in quiet.history[0]
    assert [h["loss"] for h in scored.history] == [h["loss"] for h in quiet.history]
    a, b = quiet.model.state_dict(), scored.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cancellation_stops_training(tiny_config):
    calls = []
    result = pipeline.train(tiny_config, should_stop=lambda: calls.append(1) or len(calls) > 3)
    assert result.cancelled and result.history == []


def test_nan_loss_fails_clearly(tiny_config):
    cfg = tiny_config.replace(train={"lr": 1e30, "optimizer": "sgd", "grad_clip": 0.0})
    with pytest.raises(TrainingDiverged, match="loss became"):
        pipeline.train(cfg)


def test_evaluate_convert_generate(tiny_run, tmp_path):
    model = tiny_run[0].model
    figures = pipeline.evaluate(model, bleu_samples=3, gaussian_draws=2)
    assert set(figures) >= {"bleu4", "bleu4_sampled", "gaussian_score", "exact_match"}
    assert figures["bleu4_sampled"]["samples"] == 3 and figures["gaussian_score"]["draws"] == 2
    verbs = tmp_path / "verbs.txt"
    verbs.write_text("walk walks walking walked\nglorp glorps glorping glorped\n")
    unseen = pipeline.evaluate(model, verbs=verbs, bleu_samples=0, gaussian_draws=0)
    assert (
        len([k for k in unseen["exact_match"] if "->" in k]) == 12
        and "mean" in unseen["exact_match"]
    )
    out = pipeline.convert(model, ["abandon", "walk"], "sp", "past")
    assert len(out) == 2 and all(isinstance(o, str) for o in out)
    assert pipeline.convert(model, ["walk"] * 3, ["sp", "tp", "pg"], "p")[0] == out[1]
    with pytest.raises(WordError, match="'ab1'"):
        pipeline.convert(model, ["ab1"], "sp", "p")
    with pytest.raises(WordError, match="has capitals"):
        pipeline.convert(model, ["Abandon"], "sp", "p")
    with pytest.raises(WordError, match="longer than"):
        pipeline.convert(model, ["a" * 40], "sp", "p")
    gen = pipeline.generate(model, 5, seed=1)
    assert len(gen) == 5 and all(len(t) == 4 for t in gen)
    assert gen == pipeline.generate(model, 5, seed=1)
    # a beam of one is greedy decoding; a wider beam writes from the same noise
    assert pipeline.generate(model, 5, seed=1, method="beam", beam_width=1) == gen
    assert len(pipeline.generate(model, 5, seed=1, method="beam")) == 5
    g = pipeline.evaluate(model, bleu_samples=0, gaussian_draws=1, gaussian_beam=3)
    assert g["gaussian_score"]["decoding"] == "beam 3"


def test_anchored_generation_conjugates_the_simple_present_it_draws(tiny_run):
    """Anchored: the simple present is what z writes; the other three forms are exactly the
    model's conversions of it, decoded the same way."""
    model = tiny_run[0].model
    for kw in ({}, {"method": "beam", "beam_width": 2}):
        raw = pipeline.generate(model, 12, seed=4, **kw)
        anchored = pipeline.generate(model, 12, seed=4, anchored=True, **kw)
        assert [q[0] for q in anchored] == [q[0] for q in raw]
        limit = model.config.max_length - 5
        for q, r in zip(anchored, raw, strict=True):
            if 0 < len(q[0]) <= limit:
                conj = [
                    pipeline.convert(model, [q[0]], "sp", t, **kw)[0] for t in ("tp", "pg", "p")
                ]
                assert list(q[1:]) == conj
            else:  # nothing to conjugate: z's own forms stand
                assert q == r
    g = pipeline.evaluate(model, bleu_samples=0, gaussian_draws=1, gaussian_anchored=True)
    assert g["gaussian_score"]["anchored"] is True


def _beam_candidates(model, z, width):
    """Each tense's beam candidates from each z and their log-probabilities, as joint
    generation weighs them."""
    from pipeline import decoding

    n = z.size(0)
    state = model.init_decoder(z.repeat_interleave(4, 0), torch.arange(4).repeat(n))
    with torch.no_grad():
        history, logp = decoding.nbest(
            model.decode_step, state, 4 * n, model.config.max_length, width=width
        )
    words = [[model.vocab.decode(r) for r in rows] for rows in history.tolist()]
    return words, logp


def _spread(model, quad):
    from pipeline.data import encode_sources

    ids, lengths = encode_sources(list(quad), model.vocab)
    with torch.no_grad():
        mu = model.encode(ids, lengths, torch.arange(4)).mu
    return float((mu - mu.mean(0)).pow(2).sum())


def test_joint_generation_chooses_among_each_tenses_candidates(tiny_run, monkeypatch):
    """Every form of a joint tuple is one of its tense's beam candidates from that z; with
    no weight on agreement it is beam search's own choice, and with weight its forms'
    posterior means lie no farther apart than beam search's, for no more than the
    log-probability that buys (a heavy weight here: the tiny model's candidates are far
    apart in z)."""
    evaluate = importlib.import_module("pipeline.evaluate")
    monkeypatch.setattr(evaluate, "AGREEMENT", 100.0)
    model = tiny_run[0].model
    model.eval()
    width, n = 3, 12
    z = torch.randn(n, model.config.latent_size, generator=torch.Generator().manual_seed(5))
    words, logp = _beam_candidates(model, z, width)
    beam = evaluate.decode_latents(model, z, method="beam", beam_width=width)
    joint = evaluate.decode_latents(model, z, method="beam", beam_width=width, joint=True)
    limit = evaluate.max_word_length(model)
    moved = 0
    for i, (q, b) in enumerate(zip(joint, beam, strict=True)):
        picks = [words[4 * i + k].index(q[k]) for k in range(4)]  # ValueError if not there
        if q == b:
            continue
        moved += 1
        assert all(0 < len(w) <= limit for w in q)
        gain = evaluate.AGREEMENT * (_spread(model, b) - _spread(model, q))
        cost = sum(float(logp[4 * i + k].max() - logp[4 * i + k, picks[k]]) for k in range(4))
        assert gain >= cost - 1e-3
    assert moved  # the weight changed some choices, so the checks above ran
    monkeypatch.setattr(evaluate, "AGREEMENT", 0.0)
    free = evaluate.decode_latents(model, z, method="beam", beam_width=width, joint=True)
    readable = [i for i, b in enumerate(beam) if all(0 < len(w) <= limit for w in b)]
    assert [free[i] for i in readable] == [beam[i] for i in readable]
    g = pipeline.evaluate(model, bleu_samples=0, gaussian_draws=1, gaussian_joint=True)
    assert g["gaussian_score"]["joint"] is True and g["gaussian_score"]["decoding"] == "beam 4"


@pytest.mark.parametrize(
    "kw, says",
    [
        ({"joint": True}, "beam width"),
        ({"joint": True, "method": "beam", "beam_width": 1}, "beam width"),
        ({"joint": True, "method": "beam", "beam_width": 9}, "beam width"),
        ({"joint": True, "anchored": True, "method": "beam", "beam_width": 4}, "choose one"),
    ],
)
def test_joint_generation_refuses_what_it_cannot_weigh(tiny_run, kw, says):
    with pytest.raises(ValueError, match=says):
        pipeline.generate(tiny_run[0].model, 2, **kw)


def test_model_round_trips_through_bytes_and_folder(tiny_run, tmp_path):
    model = tiny_run[0].model
    words = ["abandon", "begin", "split"]
    expected = pipeline.convert(model, words, "sp", "p")
    again = pipeline.from_bytes(pipeline.to_bytes(model))
    assert pipeline.convert(again, words, "sp", "p") == expected
    folder = pipeline.save(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert pipeline.convert(pipeline.load(folder), words, "sp", "p") == expected
    # bytes as the database keeps them, written as a folder with what they carried
    blob = pipeline.to_bytes(model, {"job_id": 7})
    out = artifacts.bytes_to_folder(blob, tmp_path / "x", extra={"note": "n"})
    assert pipeline.convert(pipeline.load(out), words, "sp", "p") == expected
    meta = json.loads((out / "config.json").read_text())
    assert meta["job_id"] == 7 and meta["note"] == "n"
    with pytest.raises(ModelLoadError):
        artifacts.bytes_to_folder(blob[:-9], tmp_path / "damaged")
    assert not (tmp_path / "damaged").exists()  # checked before anything is written


def test_damaged_models_fail_with_one_line(tiny_run, tmp_path):
    model = tiny_run[0].model
    data = pipeline.to_bytes(model)
    for bad in (data[: len(data) // 2], b"", b"not a model at all", data[:8] + b"[" + data[9:]):
        with pytest.raises(ModelLoadError):
            pipeline.from_bytes(bad)
    folder = pipeline.save(model, tmp_path / "m")
    with pytest.raises(ModelLoadError, match="no such model folder"):
        pipeline.load(tmp_path / "nowhere")
    meta = json.loads((folder / "config.json").read_text())
    meta["model"]["hidden_size"] += 1
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="shape"):
        pipeline.load(folder)
    meta["format"] = "tensevae-model/99"
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="format"):
        pipeline.load(folder)
    (folder / "model.safetensors").write_bytes(b"\x00" * 5)
    with pytest.raises(ModelLoadError):
        pipeline.load(folder)


def test_checkpoint_holds_optimizer_and_random_state(tiny_run):
    parts = artifacts.checkpoint_from_bytes(tiny_run[1][0].checkpoint())
    assert parts["state"]["epoch"] == 1 and parts["optimizer"]["state"]
    assert parts["rng"].dtype == torch.uint8


def test_plots(tiny_run, tmp_path):
    from pipeline.plots import plot_history

    path = plot_history(tiny_run[0].history * 2, tmp_path / "curves.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_history(tiny_run[0].history, tmp_path / "c.SVG").read_bytes().startswith(b"<?xml")
    assert plot_history(tiny_run[0].history, tmp_path / "c.pdf").read_bytes()[:5] == b"%PDF-"
    assert plot_history(tiny_run[0].history, tmp_path / "c").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"not \.txt"):
        plot_history(tiny_run[0].history, tmp_path / "c.txt")


def test_prior_draws_are_decoded_toward_the_likeliest_training_verb(tiny_config):
    from pipeline.training import Trainer

    cfg = tiny_config.replace(train={"prior_weight": 1.0, "prior_words": 16})
    trainer = Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    trainer._refresh_bank()
    inv, mu_inv, const = trainer._bank
    assert inv.shape[0] == 4 * len(trainer.kept)
    # A draw placed on a form's posterior mean is scored nearest to that form's line
    # (or to a line whose posterior there is at least as likely).
    mu = mu_inv / inv
    z = mu[:8]
    distance = (z * z) @ inv.T - 2 * z @ mu_inv.T + const
    own = distance[torch.arange(8), torch.arange(8)]
    assert torch.all(distance.min(1).values <= own + 1e-4)
    brute = ((z[:, None, :] - mu[None]) ** 2 * inv[None]).sum(-1) - torch.log(inv).sum(-1)
    assert torch.allclose(distance, brute, rtol=1e-4, atol=1e-3)
    result = pipeline.train(cfg)
    assert result.history[0]["prior_recon"] > 0


def test_prior_draws_in_all_four_tenses_decode_one_verb_per_draw(tiny_config, monkeypatch):
    from pipeline import training

    cfg = tiny_config.replace(train={"prior_weight": 1.0, "prior_words": 5, "prior_tenses": 4})
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    seen, real = [], training.make_batch
    monkeypatch.setattr(training, "make_batch", lambda p, v: seen.append(p) or real(p, v))
    z, b = trainer._prior_draws()
    assert z.shape == (20, cfg.model.latent_size) and b.tgt_in.size(0) == 20
    assert torch.equal(z[0], z[3]) and not torch.equal(z[3], z[4])  # one z per four tenses
    (pairs,) = seen
    assert len(pairs) == 20
    lines = set(trainer.kept)
    for i in range(0, 20, 4):
        draw = pairs[i : i + 4]
        assert [p[1] for p in draw] == [0, 1, 2, 3] and [p[3] for p in draw] == [0, 1, 2, 3]
        assert tuple(p[0] for p in draw) in lines  # the four forms of one training line
    with pytest.raises(pipeline.ConfigError, match="prior_tenses"):
        tiny_config.replace(train={"prior_tenses": 2})


def test_prior_draws_anchored_on_sp_follow_the_verb_the_decoder_writes(tiny_config, monkeypatch):
    from pipeline import training
    from pipeline.evaluate import decode_latents

    base = {"prior_weight": 1.0, "prior_words": 4, "prior_tenses": 4}
    first = training.Trainer(
        tiny_config.replace(train={**base, "prior_anchor": "sp"}),
        pipeline.data.load_train(),
        torch.device("cpu"),
    )
    kept, weights, generator = first.kept, first.model.state_dict(), first.generator.get_state()

    def draws(written, claims=None, **options):
        """The targets of the same four draws, by a trainer with these options whose decoder
        writes ``written`` in the simple present; its share anchored; the draws."""
        trainer = training.Trainer(
            tiny_config.replace(train={**base, **options}),
            pipeline.data.load_train(),
            torch.device("cpu"),
        )
        trainer.model.load_state_dict(weights)
        trainer.generator.set_state(generator)
        for line, n in (claims or {}).items():
            trainer._claims[line] = n
        monkeypatch.setattr(trainer, "_simple_presents", lambda z: written)
        z, b = trainer._prior_draws()
        share = getattr(trainer, "_prior_anchored", None)
        return [trainer.model.vocab.decode(row) for row in b.tgt_out.tolist()], share, z

    likeliest, _, z = draws([], prior_anchor="posterior")
    # the decoder's simple presents from the four draws: two training verbs, two not
    written = [kept[7][0], "zzqx", kept[30][0], ""]
    targets, share, z_sp = draws(written, prior_anchor="sp")
    assert torch.equal(z, z_sp)
    assert targets[0:4] == list(kept[7]) and targets[8:12] == list(kept[30]) and share == 0.5
    # where the decoder wrote no training verb, the draw keeps the likeliest posterior's
    assert targets[4:8] == likeliest[4:8] and targets[12:16] == likeliest[12:16]
    # with prior_anchor_top, a written verb is followed only if its posterior is near
    own = likeliest[8]  # draw 2's likeliest line's simple present
    far = next(q[0] for q in kept if q[0] != likeliest[0])
    near, share, _ = draws([far, "zzqx", own, ""], prior_anchor="sp", prior_anchor_top=1)
    assert near == likeliest and share == 0.25
    # with prior_anchor_cap, a verb followed more than its share of draws is not followed;
    # line 7 has already been followed twice the mean (under 1 a verb): no more
    capped, share, _ = draws(written, {7: 2}, prior_anchor="sp", prior_anchor_cap=2)
    assert capped[0:4] == likeliest[0:4] and capped[8:12] == list(kept[30]) and share == 0.25
    # a fallback over the cap too: likeliest keeps it, under_cap takes the likeliest line
    # under the cap instead (draws 0 and 3 have the same likeliest line here)
    first_line = next(i for i, q in enumerate(kept) if list(q) == likeliest[0:4])
    over = {7: 2, first_line: 2}
    kept_over, _, _ = draws(written, over, prior_anchor="sp", prior_anchor_cap=2)
    assert kept_over[0:4] == likeliest[0:4]
    spread, share, _ = draws(
        written, over, prior_anchor="sp", prior_anchor_cap=2, prior_anchor_fallback="under_cap"
    )
    assert share == 0.25 and spread[4:12] == capped[4:12]
    for i in (0, 12):
        if likeliest[i : i + 4] == likeliest[0:4]:
            assert spread[i : i + 4] not in (likeliest[0:4], list(kept[7]))
        assert tuple(spread[i : i + 4]) in set(kept)
    assert spread[0:4] != likeliest[0:4]
    # rest: the simple present keeps the likeliest posterior's verb, the others follow
    rest, _, _ = draws(written, prior_anchor="rest")
    assert rest[0] == likeliest[0] and rest[1:4] == list(kept[7][1:])
    assert rest[8] == likeliest[8] and rest[9:12] == list(kept[30][1:])
    assert rest[4:8] == likeliest[4:8] and rest[12:16] == likeliest[12:16]
    # without reteaching, a draw that follows the simple present written there is taught
    # only its other three forms; the others keep all four, on the same z
    fewer, share, z_fewer = draws(written, prior_anchor="sp", prior_anchor_reteach=False)
    assert fewer == targets[1:4] + targets[4:8] + targets[9:12] + targets[12:16]
    assert share == 0.5 and torch.equal(z_fewer, torch.cat([z[1:8], z[9:]]))
    # the real decoder's simple presents are what greedy generation writes from z alone
    first.model.train()
    sp = first._simple_presents(z[::4])
    assert first.model.training
    assert sp == [q[0] for q in decode_latents(first.model, z[::4])]
    with pytest.raises(pipeline.ConfigError, match="prior_anchor"):
        tiny_config.replace(train={"prior_anchor": "tp"})


def test_prior_draws_joined_to_the_batch_decode_as_they_would_alone(tiny_config):
    """One decode serves the words and the prior's draws: each row's loss is what it would
    be decoded on its own (no dropout, so the comparison is exact up to float sums)."""
    from pipeline import training
    from pipeline.model import reconstruction_loss

    cfg = tiny_config.replace(train={"prior_weight": 1.0, "prior_words": 6, "prior_tenses": 4})
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    m = trainer.model
    b = next(training.batches(trainer.pairs, m.vocab, 16, torch.Generator().manual_seed(1)))
    trainer._refresh_bank()  # (it leaves the model in training mode)
    m.eval()
    with torch.no_grad():
        post = m.encode(b.src, b.src_len, b.src_tense)
        z = post.mu
        use = torch.arange(16) % 2 == 0
        trainer.generator.manual_seed(5)
        state, tgt_in, tgt_out, n = trainer._join_prior(z, b, post, use)
        joined = reconstruction_loss(m.decode(tgt_in, state), tgt_out)
        trainer.generator.manual_seed(5)
        zp, bp = trainer._prior_draws()
        alone_words = reconstruction_loss(
            m.decode(b.tgt_in, m.init_decoder(z, b.tgt_tense, post, use)), b.tgt_out
        )
        alone_prior = reconstruction_loss(
            m.decode(bp.tgt_in, m.init_decoder(zp, bp.tgt_tense)), bp.tgt_out
        )
    assert n == 16 and joined.shape == (16 + 24,)
    assert torch.allclose(joined[:n], alone_words, atol=1e-4)
    assert torch.allclose(joined[n:], alone_prior, atol=1e-4)


def test_each_step_refreshes_the_bank_rows_of_the_forms_it_encoded(tiny_config):
    from pipeline import training

    cfg = tiny_config.replace(train={"prior_weight": 1.0})
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    trainer._refresh_bank()
    before = [t.clone() for t in trainer._bank]
    b = next(training.batches(trainer.pairs, trainer.model.vocab, 8, torch.Generator()))
    mu, logvar = torch.randn(8, 8), torch.randn(8, 8)  # stand-ins for the batch's posterior
    trainer._update_bank(b, mu, logvar)
    words = [trainer.model.vocab.decode(r) for r in b.src.tolist()]
    rows = [trainer._bank_rows[(w, k)] for w, k in zip(words, b.src_tense.tolist(), strict=True)]
    assert all(trainer.kept[r // 4][r % 4] == w for r, w in zip(rows, words, strict=True))
    once = [i for i, r in enumerate(rows) if rows.count(r) == 1]  # a repeat keeps one of them
    assert once
    fresh = trainer._bank_terms(mu, logvar)
    for table, old, new in zip(trainer._bank, before, fresh, strict=True):
        assert torch.allclose(table[[rows[i] for i in once]], new[once])
        untouched = torch.ones(table.size(0), dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(table[untouched], old[untouched])


def test_the_mmd_penalty_and_free_nats_train_and_are_reported(tiny_config):
    cfg = tiny_config.replace(
        train={"free_bits": 0.0, "free_nats": 2.0, "mmd_weight": 10.0, "eval_gaussian_draws": 0}
    )
    result = pipeline.train(cfg)
    (figures,) = result.history
    assert figures["mmd"] >= -0.05 and figures["mmd"] == figures["mmd"]
    plain = pipeline.train(tiny_config.replace(train={"eval_gaussian_draws": 0}))
    assert "mmd" not in plain.history[0] and plain.history[0]["loss"] != figures["loss"]


def _spy_on_smoothing(monkeypatch) -> list:
    """The label smoothing each training loss was computed with, in order."""
    from pipeline import training

    seen = []
    real = training.reconstruction_loss

    def spy(logits, target, smoothing=0.0):
        seen.append(smoothing)
        return real(logits, target, smoothing)

    monkeypatch.setattr(training, "reconstruction_loss", spy)
    return seen


def test_label_smoothing_reaches_the_training_loss_only(tiny_config, monkeypatch):
    asked = _spy_on_smoothing(monkeypatch)
    base = {"eval_gaussian_draws": 0, "epochs": 1}
    smoothed = pipeline.train(tiny_config.replace(train={**base, "label_smoothing": 0.1}))
    assert asked and set(asked) == {0.1}
    asked.clear()
    plain = pipeline.train(tiny_config.replace(train=base))
    assert set(asked) == {0.0}
    assert smoothed.history[0]["loss"] > plain.history[0]["loss"]  # the uniform share costs


def test_label_smoothing_can_spare_the_hardest_pairs(tiny_config, monkeypatch):
    seen = _spy_on_smoothing(monkeypatch)
    train = {"eval_gaussian_draws": 0, "epochs": 2, "hard_pairs": 0.25, "label_smoothing": 0.1}
    pipeline.train(tiny_config.replace(train={**train, "label_smoothing_hard": False}))
    rows = [s for s in seen if isinstance(s, torch.Tensor)]
    assert len(rows) == len(seen)  # even the first epoch's (random) hardest quarter
    spared = sum(int((r == 0).sum()) for r in rows)
    smoothed = sum(int(torch.isclose(r, torch.tensor(0.1)).sum()) for r in rows)
    assert spared > 0 and smoothed > 0 and spared + smoothed == sum(r.numel() for r in rows)


def _spy_on_kl(monkeypatch) -> list:
    """Each training step's mask of the words whose posterior z carries the KL term."""
    from pipeline import training

    seen = []
    real = training.Trainer._kl

    def spy(mu, logvar, used):
        seen.append(used)
        return real(mu, logvar, used)

    monkeypatch.setattr(training.Trainer, "_kl", staticmethod(spy))
    return seen


@pytest.mark.parametrize("share", [0.0, 0.5, 1.0])
def test_attending_words_keep_their_posterior_at_the_share_asked(tiny_config, share, monkeypatch):
    """context_prior_z gives attending words prior noise; context_posterior_share lets that
    share of them keep their posterior z, and with it the KL term."""
    from pipeline import training

    cfg = tiny_config.replace(
        model={"context_dropout": 0.5, "context_posterior_share": share},
        train={"prior_weight": 0.0},
    )
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    seen = _spy_on_kl(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    for b in itertools.islice(training.batches(trainer.pairs, trainer.model.vocab, 256, gen), 4):
        trainer.train_step(b)
    used = torch.cat(seen).float().mean().item()
    # half the words attend; of those, `share` keep their posterior
    expected = 0.5 + 0.5 * share
    assert abs(used - expected) < 0.08


def test_made_up_stems_join_the_batch_and_always_attend(tiny_config, monkeypatch):
    """With no word attending (context_dropout 1), the made-up copies are the only rows that
    do, and the only ones whose z comes from the prior: the KL term never sees them."""
    from pipeline import training

    cfg = tiny_config.replace(
        model={"context_dropout": 1.0},
        train={"prior_weight": 0.0, "made_up_stems": 0.5},
    )
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    seen = _spy_on_kl(monkeypatch)
    gen = torch.Generator().manual_seed(0)
    words = 0
    for b in itertools.islice(training.batches(trainer.pairs, trainer.model.vocab, 256, gen), 3):
        words += b.src.size(0)
        figures = trainer.train_step(b)
        assert math.isfinite(figures["loss"])
    rows = torch.cat(seen)
    made_up = int((~rows).sum())
    assert rows.numel() == words + made_up and 0.4 < made_up / words < 0.6
    # made-up rows come after the words of their batch, so each batch ends in them
    assert all(bool(u[: len(u) - int((~u).sum())].all()) for u in seen)


def test_made_up_prefixes_join_the_batch_always_attend_and_skip_real_words(
    tiny_config, monkeypatch
):
    """As made-up stems: with no word attending, the prefixed copies are the only rows that
    do. No prefixed word is a word of the data, held-out lines and the lab's test included."""
    from pipeline import training

    cfg = tiny_config.replace(
        model={"context_dropout": 1.0},
        train={"prior_weight": 0.0, "made_up_prefixes": 0.5, "val_fraction": 0.1},
    )
    data = pipeline.data.load_train()
    trainer = training.Trainer(cfg, data, torch.device("cpu"))
    assert trainer.val_quads and {w for q in trainer.val_quads for w in q} <= trainer._known
    assert pipeline.data.test_words() <= trainer._known
    kept_verbs = {q[0] for q in trainer.kept}
    assert all(any(v.startswith(s) and v != s for v in kept_verbs) for s in trainer._starts)
    seen = _spy_on_kl(monkeypatch)
    made = []
    real = training.made_up_prefixes

    def spy(b, *args):
        out, n = real(b, *args)
        made.extend(trainer.model.vocab.decode(ids) for ids in out.src[out.src.size(0) - n :])
        return out, n

    monkeypatch.setattr(training, "made_up_prefixes", spy)
    gen = torch.Generator().manual_seed(0)
    words = 0
    for b in itertools.islice(training.batches(trainer.pairs, trainer.model.vocab, 256, gen), 3):
        words += b.src.size(0)
        assert math.isfinite(trainer.train_step(b)["loss"])
    rows = torch.cat(seen)
    prefixed = int((~rows).sum())
    assert prefixed == len(made) and rows.numel() == words + prefixed
    assert 0.4 < prefixed / words < 0.6
    assert all(bool(u[: len(u) - int((~u).sum())].all()) for u in seen)
    assert not set(made) & trainer._known


def test_made_up_stems_from_regular_lines_pass_over_the_exceptions(tiny_config, monkeypatch):
    from pipeline import training
    from pipeline.data import regular

    cfg = tiny_config.replace(
        train={"prior_weight": 0.0, "made_up_stems": 0.5, "made_up_from": "regular"}
    )
    trainer = training.Trainer(cfg, pipeline.data.load_train(), torch.device("cpu"))
    calls = []
    real = training.made_up_stems

    def spy(b, vocab, share, generator, eligible=None):
        calls.append((b, eligible))
        return real(b, vocab, share, generator, eligible=eligible)

    monkeypatch.setattr(training, "made_up_stems", spy)
    line_of = {(w, i): q for q in trainer.kept for i, w in enumerate(q)}
    gen = torch.Generator().manual_seed(0)
    for b in itertools.islice(training.batches(trainer.pairs, trainer.model.vocab, 256, gen), 2):
        trainer.train_step(b)
    vocab = trainer.model.vocab
    exceptions = 0
    for b, eligible in calls:
        words = [vocab.decode(ids) for ids in b.src.tolist()]
        expected = [
            regular(line_of[w, k]) for w, k in zip(words, b.src_tense.tolist(), strict=True)
        ]
        assert eligible.tolist() == expected
        exceptions += expected.count(False)
    assert exceptions > 0  # the batches held some exceptions to pass over


def test_the_optimizer_follows_the_learning_rate_schedule(tiny_config):
    cfg = tiny_config.replace(train={"lr_schedule": "cosine", "lr_floor": 0.1, "max_lines": 100})
    lr = cfg.train.lr
    # over one epoch the mean rate of a half cosine from lr to 0.1 lr is about 0.55 lr
    assert 0.45 * lr < pipeline.train(cfg).history[-1]["lr"] < 0.65 * lr
    flat = cfg.replace(train={"lr_schedule": "constant"})
    assert pipeline.train(flat).history[-1]["lr"] == pytest.approx(lr)


def test_hard_pairs_are_the_pairs_attention_decoded_worst_trained_again(tiny_config):
    from pipeline import training
    from pipeline.data import make_batch

    trainer = training.Trainer(
        tiny_config.replace(train={"hard_pairs": 0.1}), pipeline.data.load_train(), "cpu"
    )
    n = len(trainer.pairs)
    assert trainer.hard == round(n * 0.1)
    assert trainer.steps_per_epoch == -(-(n + trainer.hard) // trainer.config.train.batch_size)
    # the first epoch knows no losses: every pair once, and a random tenth again
    first = trainer.epoch_pairs()
    assert first[:n] == trainer.pairs and len(first) == n + trainer.hard
    assert len(set(first[n:])) == trainer.hard
    # a batch's losses are noted for the pairs decoded with attention only
    batch = make_batch(trainer.pairs[:4], trainer.model.vocab)
    attended = torch.tensor([True, False, True, False])
    trainer._note_losses(batch, torch.tensor([5.0, 6.0, 7.0, 8.0]), attended)
    assert trainer._pair_loss[:4].tolist() == [5.0, 0.0, 7.0, 0.0]
    hard = trainer.epoch_pairs()[n:]
    assert hard[:2] == [trainer.pairs[2], trainer.pairs[0]]  # the worst first
    # off, an epoch is the pairs as they are, and nothing is noted
    off = training.Trainer(tiny_config, pipeline.data.load_train(), "cpu")
    off._note_losses(batch, torch.tensor([5.0, 6.0, 7.0, 8.0]), attended)
    assert off.epoch_pairs() is off.pairs and not off._pair_loss.any()


def test_hard_pairs_again_trains_the_hardest_of_the_hard_a_third_time(tiny_config):
    from pipeline import training

    cfg = tiny_config.replace(train={"hard_pairs": 0.1, "hard_pairs_again": 0.02})
    trainer = training.Trainer(cfg, pipeline.data.load_train(), "cpu")
    n, size = len(trainer.pairs), trainer.config.train.batch_size
    assert trainer.again == round(n * 0.02) > 0
    assert trainer.steps_per_epoch == -(-(n + trainer.hard + trainer.again) // size)
    trainer._pair_loss[:3] = torch.tensor([5.0, 9.0, 7.0])
    epoch = trainer.epoch_pairs()
    assert len(epoch) == n + trainer.hard + trainer.again
    hard, again = epoch[n : n + trainer.hard], epoch[n + trainer.hard :]
    assert again == hard[: trainer.again]  # the hardest of the hard, hardest first
    assert again[:3] == [trainer.pairs[1], trainer.pairs[2], trainer.pairs[0]]
    # off (the shipped config's setting), an epoch holds each hard pair once more, no more
    once = training.Trainer(
        cfg.replace(train={"hard_pairs_again": 0.0}), pipeline.data.load_train(), "cpu"
    )
    assert once.again == 0 and len(once.epoch_pairs()) == n + once.hard


def record_use_context(trainer) -> list[torch.Tensor]:
    """The rows that attend (use_context), as each train_step of ``trainer`` hands them to
    the decoder, appended to the list returned."""
    seen = []
    real = trainer.model.init_decoder

    def recording(z, tense, post=None, use_context=None):
        seen.append(use_context.clone())
        return real(z, tense, post, use_context)

    trainer.model.init_decoder = recording
    return seen


def test_a_repeated_line_shares_its_pairs_loss_and_hardness(tiny_config):
    """train.txt holds a few lines twice (apply, awake, ...): each copy's pairs are trained,
    a loss decoded on either is noted on both, and a hard pick of either makes both attend."""
    from pipeline import training
    from pipeline.data import make_batch

    cfg = tiny_config.replace(
        model={"context_dropout": 1.0},
        train={"hard_pairs": 0.1, "hard_pairs_attend": True, "max_lines": 0},
    )
    trainer = training.Trainer(cfg, pipeline.data.load_train(), "cpu")
    twice = {k: rows for k, rows in trainer._pair_rows.items() if len(rows) > 1}
    assert twice and all(len(rows) == 2 for rows in twice.values())
    key, (first, second) = next(iter(twice.items()))
    assert trainer.pairs[first] == trainer.pairs[second] and key[0] == trainer.pairs[first][0]
    batch = make_batch([trainer.pairs[second]], trainer.model.vocab)
    trainer._note_losses(batch, torch.tensor([9.0]), torch.tensor([True]))
    assert trainer._pair_loss[[first, second]].tolist() == [9.0, 9.0]
    assert trainer._pair_loss.count_nonzero() == 2
    seen = record_use_context(trainer)
    other = next(
        i for i, p in enumerate(trainer.pairs) if len(trainer._pair_rows[training.pair_key(p)]) == 1
    )
    # the jitter picked one copy: a batch row of either attends
    trainer._hard_keys = {training.pair_key(trainer.pairs[first])}
    trainer.train_step(
        make_batch([trainer.pairs[second], trainer.pairs[other]], trainer.model.vocab)
    )
    assert seen[0].tolist() == [True, False]


def test_pairs_are_told_apart_by_their_target_and_made_up_rows_note_no_loss(tiny_config):
    """One source form and tenses may lead to two targets in a user's data (`lie ... lay`
    and `lie ... lied`): each pair keeps its own loss. A made-up row that happens to spell a
    real pair is still no pair: its loss is noted nowhere."""
    from pipeline import training
    from pipeline.data import make_batch

    quads = [
        ("lie", "lies", "lying", "lay"),
        ("lie", "lies", "lying", "lied"),
        ("walk", "walks", "walking", "walked"),
    ]
    cfg = tiny_config.replace(
        model={"context_dropout": 1.0},
        train={"hard_pairs": 0.5, "val_fraction": 0.0, "max_lines": 0},
    )
    trainer = training.Trainer(cfg, quads, "cpu")
    lay, lied = ("lie", 0, "lay", 3), ("lie", 0, "lied", 3)
    assert len(trainer._pair_rows[lay]) == len(trainer._pair_rows[lied]) == 1
    batch = make_batch([lay], trainer.model.vocab)
    trainer._note_losses(batch, torch.tensor([9.0]), torch.tensor([True]))
    (row,) = trainer._pair_rows[lay]
    assert trainer._pair_loss.nonzero()[:, 0].tolist() == [row]
    # the same pair twice, the second row made up (appended last): only the first counts
    walk = ("walk", 0, "walked", 3)
    batch = make_batch([walk, walk], trainer.model.vocab)
    keys = training.batch_keys(["walk", "walk"], batch, trainer.model.vocab, rows=1)
    assert keys == [walk, None]
    trainer._note_losses(batch, torch.tensor([2.0, 7.0]), torch.tensor([True, True]), keys)
    assert trainer._pair_loss[trainer._pair_rows[walk]].tolist() == [2.0]


def test_a_training_step_keys_its_made_up_rows_as_no_pair(tiny_config, monkeypatch):
    """Made-up rows, appended after a batch's pairs, reach the loss notes with no key even
    when their letters spell the very pairs they came from."""
    from pipeline import training
    from pipeline.data import Batch, make_batch

    cfg = tiny_config.replace(train={"hard_pairs": 0.5, "made_up_stems": 0.5, "max_lines": 40})
    trainer = training.Trainer(cfg, pipeline.data.load_train(), "cpu")

    def spelled_as_real(b, vocab, share, generator, eligible=None):  # every row, unchanged
        return Batch(*(torch.cat([t, t]) for t in vars(b).values())), b.src.size(0)

    monkeypatch.setattr(training, "made_up_stems", spelled_as_real)
    seen, note = [], trainer._note_losses
    trainer._note_losses = lambda b, w, c, keys=None: (seen.append(keys), note(b, w, c, keys))
    pairs = trainer.pairs[:3]
    trainer.train_step(make_batch(pairs, trainer.model.vocab))
    assert seen == [[training.pair_key(p) for p in pairs] + [None] * 3]


@pytest.mark.parametrize("on", [True, False])
def test_hard_pairs_attend_in_both_their_passes(tiny_config, on):
    """With train.hard_pairs_attend the epoch's hardest pairs always attend (here context
    dropout is 1, so no other pair does); without it they attend at context dropout's odds,
    never here."""
    from pipeline import training
    from pipeline.data import make_batch

    cfg = tiny_config.replace(
        model={"context_dropout": 1.0},
        train={"hard_pairs": 0.1, "hard_pairs_attend": on, "max_lines": 40},
    )
    trainer = training.Trainer(cfg, pipeline.data.load_train(), "cpu")
    n = len(trainer.pairs)
    trainer._pair_loss[5:9] = torch.tensor([4.0, 3.0, 2.0, 1.0])  # the hardest four
    hard = trainer.epoch_pairs()[n:]
    assert hard[:4] == trainer.pairs[5:9]
    seen = record_use_context(trainer)
    # a batch of the second pass's first rows and of pairs that are not hard, both ways round
    hard_set = set(hard)
    easy = [p for p in trainer.pairs if p not in hard_set][:4]
    trainer.train_step(make_batch(hard[:4] + easy, trainer.model.vocab))
    trainer.train_step(make_batch(easy + hard[:2], trainer.model.vocab))
    assert seen[0].tolist() == [on] * 4 + [False] * 4
    assert seen[1].tolist() == [False] * 4 + [on] * 2
