"""Speed benchmark: training against a per-word reference loop and the machine's matmul
ceiling, conversion in-process and through the queue, a cold one-off conversion, and the
queue's own overhead.

    python benchmarks/speed.py [--repeats 3] [--bulk-lines 100000] [--out benchmarks/results/speed.md]

Every figure is the median over repeats with its spread (min-max). Broker and database are
the no-server default unless TENSEVAE_BROKER_URL / TENSEVAE_DATABASE_URL are set; --servers
uses this machine's Redis and PostgreSQL for the job figures."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import pipeline  # noqa: E402
from pipeline import products  # noqa: E402
from pipeline.data import directed, load_train, make_pairs  # noqa: E402
from pipeline.evaluate import convert  # noqa: E402
from pipeline.training import Trainer  # noqa: E402
from pipeline.vocab import PAD  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
import _host  # noqa: E402


def med(values) -> tuple[float, float, float]:
    v = sorted(values)
    return statistics.median(v), v[0], v[-1]


def fmt(m, unit="", digits=0) -> str:
    return f"{m[0]:,.{digits}f}{unit} ({m[1]:,.{digits}f}-{m[2]:,.{digits}f})"


# -- training ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(config, batches: int, repeats: int, device: torch.device) -> tuple[tuple, float]:
    """Words/s of tensevae's training step, and useful FLOPs per word (no padding counted)."""
    trainer = Trainer(config, load_train(), device)
    gen = torch.Generator().manual_seed(0)
    from pipeline.data import batches as make_batches

    data = list(make_batches(trainer.pairs, trainer.model.vocab, config.train.batch_size, gen))
    data = [b.to(device) for b in data]
    # The prior's draws (train.prior_weight) are decoded in the same step: their work counts
    # too, from the batches the trainer actually drew.
    drawn: list = []
    draw = trainer._prior_draws

    def recording_draw():
        z, b = draw()
        drawn.append(b)
        return z, b

    trainer._prior_draws = recording_draw
    # So are the made-up stems and prefixes (train.made_up_stems, made_up_prefixes): rows
    # appended to the batch.
    from types import SimpleNamespace

    from pipeline import training

    made_up: list = []
    augmenters = ("made_up_stems", "made_up_prefixes")
    real_made_up = {name: getattr(training, name) for name in augmenters}

    def recording(real):
        def record(b, *args, **kwargs):
            out, n = real(b, *args, **kwargs)
            if n:
                made_up.append(SimpleNamespace(src_len=out.src_len[-n:], tgt_out=out.tgt_out[-n:]))
            return out, n

        return record

    for name, real in real_made_up.items():
        setattr(training, name, recording(real))
    # Attention is counted from the teacher-forced decodes the step ran: rows that may not
    # attend (context dropout, the prior's draws) compute none.
    decodes: list = []
    model = trainer.model
    if config.model.attention:
        real_decode = model._decode_attending

        def recording_decode(tokens, state):
            decodes.append((tokens, state.use_context, state.mask))
            return real_decode(tokens, state)

        model._decode_attending = recording_decode
    trainer.model.train()
    for b in data[:3]:
        trainer.train_step(b)
    sync(device)
    rates, flops = [], []
    for r in range(repeats):
        chosen = data[3 + r * batches : 3 + (r + 1) * batches]
        words = sum(b.src.size(0) for b in chosen)
        drawn.clear()
        made_up.clear()
        decodes.clear()
        start = time.perf_counter()
        for b in chosen:
            trainer.train_step(b)
        sync(device)
        rates.append(words / (time.perf_counter() - start))
        work = sum(step_flops(config.model, b) for b in chosen)
        work += sum(prior_flops(config.model, b) for b in drawn)
        work += sum(step_flops(config.model, b) for b in made_up)
        work += attention_flops(config.model, decodes)
        flops.append(work / words)
    for name, real in real_made_up.items():
        setattr(training, name, real)
    model.__dict__.pop("_decode_attending", None)
    return med(rates), statistics.fmean(flops)


def step_flops(m, b) -> float:
    """Forward + backward floating-point operations of one batch, counted from the real word
    lengths: LSTM gate products and projections (attention: attention_flops); backward taken
    as twice forward."""
    H, Z, E, C, V = m.hidden_size, m.latent_size, m.tense_embedding, m.char_embedding, 30
    D = 2 if m.bidirectional else 1
    He = H * D
    src = b.src_len.float()
    tgt = (b.tgt_out != 0).sum(1).float()
    cond, dec_in = decoder_inputs(m)
    enc = src * D * 2 * 4 * H * (C + H)
    heads = 2 * 2 * He * Z + 2 * cond * 2 * H + 2 * E * 2 * H * D + memory_flops(m)
    dec = tgt * 2 * 4 * H * (dec_in + H)
    out = tgt * 2 * H * V
    forward = enc + heads + dec + out  # attention: attention_flops
    return float((3 * forward).sum())


def attention_flops(m, decodes) -> float:
    """Forward + backward operations of the attending decoder's attention and combining
    layer, from the decodes a step ran (tokens, use_context, source mask): every written
    character pays the combining layer's share from the decoder's output; a character of a
    row that attends also pays its key, its scores and context over the source, and the
    context's share of the combining layer."""
    H = m.hidden_size
    He = H * (2 if m.bidirectional else 1)
    total = 0.0
    for tokens, use_context, mask in decodes:
        tgt = (tokens != PAD).sum(1).float()
        src = mask.sum(1).float()
        attends = use_context.view(-1).float()
        per_char = 2 * H * H + attends * (2 * H * He + 4 * src * He + 2 * He * H)
        total += float((tgt * per_char).sum())
    return 3 * total


def decoder_inputs(m) -> tuple[int, int]:
    """Sizes of the decoder's condition (z, tense, memory read) and of its LSTM input."""
    cond = m.latent_size + m.tense_embedding + (m.latent_memory_size if m.latent_memory else 0)
    dec_in = m.char_embedding + (cond if m.decoder_input_z else 0)
    return cond, dec_in + (m.hidden_size if m.attention else 0)


def memory_flops(m) -> float:
    """z's read of the latent memory: distances to every key, then the weighted values."""
    return 2 * m.latent_memory * (m.latent_size + m.latent_memory_size) if m.latent_memory else 0


def prior_flops(m, b) -> float:
    """A prior draw's row: decoded from z alone (no encoder, nothing to attend to)."""
    H, V = m.hidden_size, 30
    cond, dec_in = decoder_inputs(m)
    tgt = (b.tgt_out != 0).sum(1).float()
    forward = tgt * (2 * 4 * H * (dec_in + H) + 2 * H * V)
    forward += 2 * cond * 2 * H + memory_flops(m)  # its combining layer: attention_flops
    return float((3 * forward).sum())


@cache  # measured once per device, for training and conversion alike
def matmul_rates(repeats: int, device: torch.device) -> dict[str, tuple]:
    """fp32 matrix-multiply rates (FLOP/s) of each product torch runs: ``torch.mm`` (MKL on
    the CPU; on CUDA with TF32 off, so true fp32) and, on the CPU, oneDNN's
    (``pipeline.products``), which on an AMD EPYC with AVX-512 ran twice MKL's rate."""
    n = 8192 if device.type == "cuda" else 1024
    torch.backends.cuda.matmul.allow_tf32 = False
    a, c = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    ways = {"torch.mm": lambda: a @ c}
    if device.type == "cpu" and products.available():
        ct = c.t().contiguous()  # oneDNN's linear takes the weight as (out, in)
        ways["oneDNN"] = lambda: products._product(a, ct)
    out = {}
    for name, fn in ways.items():
        for _ in range(3):
            fn()
        sync(device)
        rates = []
        for _ in range(repeats):
            k = 20
            start = time.perf_counter()
            for _ in range(k):
                fn()
            sync(device)
            rates.append(2 * n**3 * k / (time.perf_counter() - start))
        out[name] = med(rates)
    return out


def matmul_ceiling(repeats: int, device: torch.device) -> tuple:
    """The fastest fp32 matrix-multiply rate torch reaches here: the ceiling shares are of."""
    return max(matmul_rates(repeats, device).values())


def ceiling_rows(repeats: int, device: torch.device) -> list[tuple[str, str]]:
    size = "8192^3" if device.type == "cuda" else "1024^3"
    rows = [
        (f"fp32 matmul, {name}, {size} (GFLOP/s)", fmt(tuple(x / 1e9 for x in rate)))
        for name, rate in matmul_rates(repeats, device).items()
    ]
    ceiling = matmul_ceiling(repeats, device)
    rows.append(("fp32 matmul ceiling, the faster (GFLOP/s)", fmt(tuple(x / 1e9 for x in ceiling))))
    return rows


@contextmanager
def products_by(name: str):
    """TENSEVAE_PRODUCTS=name within the block (pipeline.products reads it once a process)."""
    before = os.environ.get("TENSEVAE_PRODUCTS")
    os.environ["TENSEVAE_PRODUCTS"] = name
    products.choice.cache_clear()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSEVAE_PRODUCTS")
        else:
            os.environ["TENSEVAE_PRODUCTS"] = before
        products.choice.cache_clear()


def per_word_reference(repeats: int, device: torch.device, words: int = 30) -> tuple[tuple, float]:
    """The reference report's way: one word per optimizer step, the decoder run step by step
    with a teacher-forcing coin flip at each step, same model size (hidden 256, latent 32).
    Words/s, and its useful FLOPs per word, counted as the training step's are."""
    cfg = pipeline.load_config("lab")
    torch.manual_seed(0)
    model = pipeline.TenseCVAE(cfg.model, pipeline.model.Vocab()).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pairs = make_pairs(load_train()[:200], "same")
    from pipeline.data import make_batch

    rates, work = [], []
    for r in range(repeats):
        start = time.perf_counter()
        for p in pairs[r * words : (r + 1) * words]:
            b = make_batch([p], model.vocab).to(device)
            work.append(step_flops(cfg.model, b))
            post = model.encode(b.src, b.src_len, b.src_tense)
            z = model.reparameterize(post.mu, post.logvar)
            state = model.init_decoder(z, b.tgt_tense, post)
            token, loss = b.tgt_in[:, 0], 0.0
            for t in range(b.tgt_out.size(1)):
                logits, state = model.decode_step(token, state)
                loss = loss + torch.nn.functional.cross_entropy(logits, b.tgt_out[:, t])
                forced = torch.rand(()) < 0.5
                token = b.tgt_out[:, t] if forced else logits.argmax(-1)
            kl = pipeline.model.kl_divergence(post.mu, post.logvar).sum()
            opt.zero_grad()
            (loss + kl).backward()
            opt.step()
        sync(device)
        rates.append(words / (time.perf_counter() - start))
    return med(rates), statistics.fmean(work)


def lab_batched(batches: int, repeats: int, device: torch.device) -> tuple:
    """The per-word loop's model and pairs (the lab config) through tensevae's training step
    instead: 128 words a step, teacher-forced, the decoder one nn.LSTM call. What batching
    alone buys, apart from the shipped config's extra work per word."""
    cfg = pipeline.load_config(
        "lab",
        ["train.batch_size=128", "train.pairs=all", "train.tf_start=1.0", "train.tf_end=1.0"],
    )
    return train_rate(cfg, batches, repeats, device)


# -- conversion --------------------------------------------------------------------------------


def conversion_flops(model, words: list[str], targets: list[str]) -> float:
    """Forward floating-point operations per converted word (encoder, heads, decoder over
    the written characters), counted as the training step's forward pass is."""
    from pipeline.data import make_batch

    pairs = [(w, 0, t, 3) for w, t in zip(words, targets, strict=True)]
    b = make_batch(pairs, model.vocab)
    work = step_flops(model.config, b)
    if model.config.attention:  # every converted word attends to its source
        attends = torch.ones(len(words))
        work += attention_flops(model.config, [(b.tgt_in, attends, b.src != PAD)])
    return work / 3 / len(words)


def conversions(quads) -> tuple[list[str], list[str], list[str]]:
    """The twelve conversions of each line: words, their tenses, the tenses asked for."""
    words, src, _, tgt = directed(quads)
    return words, src, tgt


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed(repeats: int, n: int, fn) -> tuple:
    """Words/s of ``fn`` (``n`` words) over ``repeats`` after one untimed pass: oneDNN
    builds its kernels for each new shape on first use (a first bf16 pass over train.txt
    ran about 15% slower than the next, 2026-12-07), which a bulk job pays once."""
    fn()
    return med([n / seconds(fn) for _ in range(repeats)])


def paired(repeats: int, n: int, fn, base) -> tuple[tuple, tuple]:
    """Words/s of ``fn`` and its speed over ``base``'s, the two timed in turn in each of
    ``repeats`` rounds after one untimed pass each: each ratio is of two runs a few seconds
    apart, so a host whose speed drifts over the run moves it less."""
    fn(), base()
    rates, ratios = [], []
    for _ in range(repeats):
        b, f = seconds(base), seconds(fn)
        rates.append(n / f)
        ratios.append(b / f)
    return med(rates), med(ratios)


def conversion_rates(model, repeats: int) -> dict:
    """In-process conversion of train.txt's twelve conversions per line (14,724 words):
    greedy, beam search and round trip in fp32, then bf16 and int8 (pipeline.precision)."""
    words, src, tgt = conversions(load_train())
    n = len(words)
    # greedy fp32 as users run it: by default (TENSEVAE_PRODUCTS=auto) oneDNN's products out
    # of training on a CPU where they ran faster, torch's elsewhere; beside it, the other
    # products, and whether the two write the same words
    onednn_here = products.available() and products.onednn_faster()
    other = "torch" if onednn_here or not products.available() else "onednn"
    with products_by("auto"):
        out = {"greedy fp32": timed(repeats, n, lambda: convert(model, words, src, tgt))}
        ours = convert(model, words, src, tgt)
    out["greedy fp32: the products TENSEVAE_PRODUCTS=auto runs here"] = (
        "oneDNN's" if onednn_here else "torch's"
    )

    def by(name):
        def run():
            with products_by(name):
                convert(model, words, src, tgt)

        return run

    rate, ratio = paired(repeats, n, by(other), by("auto"))
    out[f"greedy fp32, TENSEVAE_PRODUCTS={other}"] = rate
    out[f"greedy fp32, TENSEVAE_PRODUCTS={other} over auto's, paired rounds"] = fmt(ratio, "x", 2)
    with products_by(other):
        theirs = convert(model, words, src, tgt)
    alike = sum(a == b for a, b in zip(ours, theirs, strict=True))
    out[f"greedy fp32: words as TENSEVAE_PRODUCTS={other} writes them, train.txt"] = (
        f"{alike:,} of {n:,}"
    )
    few = random.Random(0).sample(range(n), 512)
    bw, bs, bt = [words[i] for i in few], [src[i] for i in few], [tgt[i] for i in few]
    out["beam 4 fp32"] = timed(repeats, 512, lambda: convert(model, bw, bs, bt, method="beam"))
    out["round trip 4 fp32"] = timed(
        repeats, 512, lambda: convert(model, bw, bs, bt, method="roundtrip")
    )
    reference = convert(model, words, src, tgt)
    for precision in ("bf16", "int8"):
        out.update(lowered_figures(model, precision, (words, src, tgt), reference, repeats))
    out["useful GFLOP per word (forward)"] = conversion_flops(model, words, reference) / 1e9
    return out


def lowered_figures(model, precision, data, reference, repeats) -> dict:
    """bf16 or int8 as users run it (close calls decoded again in fp32) and alone: rates,
    and how its words compare with fp32's on train.txt, the shipped model's held-out verbs,
    test.txt and words fed in the wrong tense (the model's hardest inputs)."""
    from pipeline import artifacts
    from pipeline import precision as lower
    from pipeline.data import load_test, split_by_verb, test_words
    from pipeline.evaluate import closest_calls

    try:
        form = lower.lowered(model, precision)
    except lower.PrecisionUnavailable as e:
        return {precision: str(e)}
    words, src, tgt = data
    n = len(words)
    out = {}
    if precision == "int8":
        engine = lower.int8_engine()
        out["int8: the quantized engine its weights are packed for"] = (
            engine or f"{torch.backends.quantized.engine} (torch's default)"
        )
    rate, ratio = paired(
        repeats, n, lambda: convert(form, words, src, tgt), lambda: convert(model, words, src, tgt)
    )
    out[f"greedy {precision}, close calls in fp32"] = rate
    out[f"{precision} over fp32, paired rounds"] = fmt(ratio, "x", 2)

    out[f"greedy {precision} alone"] = timed(
        repeats, n, lambda: closest_calls(form, words, src, tgt)
    )

    def unlike(w, s, t, ref) -> tuple[str, torch.Tensor]:
        got, gaps = closest_calls(form, w, s, t)
        flips = [float(gaps[i]) for i in range(len(w)) if got[i] != ref[i]]
        text = f"{len(flips)} of {len(w):,}, each within {max(flips, default=0):.3f} of a tie"
        return text, gaps

    text, gaps = unlike(words, src, tgt, reference)
    out[f"{precision} alone: words unlike fp32's, train.txt"] = text
    # the words convert() sends back to fp32 are exactly these
    out[f"{precision}: words decoded again in fp32 (within {lower.TIE_MARGIN} of a tie)"] = (
        f"{float((gaps < lower.TIE_MARGIN).float().mean()):.1%}"
    )
    checks = {"train.txt, 12 directions": (words, src, tgt, reference)}
    meta = artifacts.metadata(artifacts.pretrained_path())["config"]["train"]
    _, held = split_by_verb(load_train(), meta["val_fraction"], meta["seed"], test_words())
    hw, hs, ht = conversions(held)
    checks[f"validation split ({len(held)} held-out verbs), 12 directions"] = (
        hw,
        hs,
        ht,
        convert(model, hw, hs, ht),
    )
    tests = load_test()
    tw, ts, tt = [c.source for c in tests], [c.src for c in tests], [c.tgt for c in tests]
    checks["test.txt"] = (tw, ts, tt, convert(model, tw, ts, tt))
    wrong = [w for quad in load_train() for w in quad[1:]]
    ws, wt = ["sp"] * len(wrong), ["p"] * len(wrong)
    checks["wrong-tense inputs (tp, pg, p forms as sp -> p)"] = (
        wrong,
        ws,
        wt,
        convert(model, wrong, ws, wt),
    )
    for name, (w, s, t, ref) in checks.items():
        same = sum(map(str.__eq__, convert(form, w, s, t), ref))
        out[f"{precision} identical outputs, {name}"] = f"{same:,} of {len(ref):,}"
    out[f"{precision} alone: words unlike fp32's, wrong-tense inputs"] = unlike(
        wrong, ws, wt, checks["wrong-tense inputs (tp, pg, p forms as sp -> p)"][3]
    )[0]
    return out


_COLD_PARTS = {
    # the default one-off path: pipeline.lite, numpy, no torch imported
    "numpy": (
        "from pipeline import lite, modelfile",
        "m = lite.LiteModel.load(modelfile.pretrained_path())",
        "lite.convert(m, ['abandon'], 'sp', 'p')",
    ),
    "torch": (
        "import pipeline; from pipeline import artifacts",
        "m = artifacts.load_pretrained()",
        "pipeline.convert(m, ['abandon'], 'sp', 'p')",
    ),
}


def cold_convert(repeats: int) -> dict:
    """A fresh `tensevae convert abandon --from sp --to p` by each engine, whole, and its
    imports, model load and decode timed apart in a fresh interpreter."""
    out = {}
    tv = str(Path(sys.executable).with_name("tensevae"))
    for engine, (imports, load, decode) in _COLD_PARTS.items():
        code = (
            f"import time; t0 = time.perf_counter(); {imports}; t1 = time.perf_counter(); "
            f"{load}; t2 = time.perf_counter(); {decode}; t3 = time.perf_counter(); "
            "print(t1 - t0, t2 - t1, t3 - t2)"
        )
        whole, parts = [], []
        for _ in range(repeats):
            start = time.perf_counter()
            subprocess.run(
                [tv, "convert", "abandon", "--from", "sp", "--to", "p", "--engine", engine],
                check=True,
                capture_output=True,
                cwd=ROOT,
            )
            whole.append(time.perf_counter() - start)
            p = subprocess.run(
                [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
            )
            parts.append([float(x) for x in p.stdout.split()])
        name = "default engine, numpy" if engine == "numpy" else "--engine torch"
        out[f"{name}: whole command (s)"] = med(whole)
        out[f"{name}: imports (s)"] = med(p[0] for p in parts)
        out[f"{name}: model load (s)"] = med(p[1] for p in parts)
        out[f"{name}: decode (s)"] = med(p[2] for p in parts)
    return out


def alongside(processes: int, threads: int, window: float) -> list[dict]:
    """``processes`` conversion processes of ``threads`` threads each, converting in-process
    over the same ``window`` seconds (benchmarks/_alongside.py): each one's words/s, and
    when it began and ended (epoch seconds)."""
    script = str(ROOT / "benchmarks" / "_alongside.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a conversion process for the cores' figure did not start")
        start = time.time() + 0.5
        for p in procs:
            p.stdin.write(f"{start} {start + window}\n")
            p.stdin.flush()
        return [json.loads(p.stdout.readline()) for p in procs]
    except BaseException:
        for p in procs:
            p.kill()
        raise
    finally:
        for p in procs:
            p.stdin.close()
            p.stdout.close()
            p.wait()


def cores_allow(repeats: int, half: int, window: float = 10.0) -> tuple:
    """Two processes of ``half`` the threads converting at once over one alone, the median
    of ``repeats`` pairs: how far this machine's cores let two workers scale (two workers'
    figures are of the same split), with nothing but the conversion running."""
    ratios = []
    for _ in range(repeats):
        one, two = (sum(p["words/s"] for p in alongside(n, half, window)) for n in (1, 2))
        ratios.append(two / one)
    return med(ratios)


# -- the job path ------------------------------------------------------------------------------


def job_figures(env: dict, bulk_lines: int, repeats: int, bulk_repeats: int) -> dict:
    """Submit-to-start latency, jobs/s through one worker, and a bulk conversion job end to
    end with one and with two workers; runs in a subprocess with the given environment."""
    script = ROOT / "benchmarks" / "_jobs.py"
    p = subprocess.run(
        [sys.executable, str(script), str(bulk_lines), str(repeats), str(bulk_repeats)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if p.returncode:
        raise RuntimeError(p.stderr[-3000:])
    return json.loads(p.stdout.strip().splitlines()[-1])


def training_rows(config, batches: int, repeats: int, device) -> list[tuple[str, str]]:
    with products_by("torch"):
        rate, flops = train_rate(config, batches, repeats, device)
    onednn = None
    if device.type == "cpu" and products.available():
        with products_by("onednn"):
            onednn, _ = train_rate(config, batches, repeats, device)
    ref, ref_flops = per_word_reference(repeats, device)
    lab, lab_flops = lab_batched(batches, repeats, device)
    ceiling = matmul_ceiling(repeats, device)
    rows = [
        ("training step, default config (words/s)", fmt(rate)),
        ("per-word reference loop, same size (words/s)", fmt(ref, digits=1)),
        ("ratio", f"{rate[0] / ref[0]:.0f}x"),
        ("useful GFLOP per word (forward + backward)", f"{flops / 1e9:.4f}"),
        *ceiling_rows(repeats, device),
        ("training step's share of the ceiling", f"{rate[0] * flops / ceiling[0]:.0%}"),
    ]
    if onednn:
        rows += [
            ("training step, TENSEVAE_PRODUCTS=onednn (words/s)", fmt(onednn)),
            ("  its ratio to the per-word loop", f"{onednn[0] / ref[0]:.0f}x"),
            ("  its share of the ceiling", f"{onednn[0] * flops / ceiling[0]:.0%}"),
        ]
    return [
        *rows,
        ("per-word reference loop: useful GFLOP per word", f"{ref_flops / 1e9:.4f}"),
        (
            "training step's useful work a second over the per-word loop's",
            f"{rate[0] * flops / (ref[0] * ref_flops):.0f}x",
        ),
        ("the lab's model in tensevae's batched step, 128 words (words/s)", fmt(lab)),
        ("the lab's model batched over the per-word loop", f"{lab[0] / ref[0]:.0f}x"),
        ("the lab's model batched: share of the ceiling", f"{lab[0] * lab_flops / ceiling[0]:.0%}"),
    ]


SERVERS = {
    "TENSEVAE_BROKER_URL": os.environ.get("TENSEVAE_TEST_REDIS_URL", "redis://127.0.0.1:6379/14"),
    "TENSEVAE_DATABASE_URL": os.environ.get(
        "TENSEVAE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--bulk-lines", type=int, default=100_000)
    ap.add_argument("--bulk-repeats", type=int, default=1, help="repeats of the bulk jobs")
    ap.add_argument("--servers", action="store_true", help="also measure with Redis + PostgreSQL")
    ap.add_argument("--parts", default="train,convert,cold,jobs", help="which figures to measure")
    ap.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where the training figures run"
    )
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "speed.md"))
    args = ap.parse_args()
    R = args.repeats
    started = _host.now()
    device = torch.device(args.device)
    parts = set(args.parts.split(","))
    rows: list[tuple[str, str]] = []
    if "train" in parts:
        rows += training_rows(pipeline.load_config("default"), args.batches, R, device)
    if "convert" in parts:
        figures = conversion_rates(pipeline.load_pretrained(), R)
        flops = figures.pop("useful GFLOP per word (forward)")
        for k, v in figures.items():
            if isinstance(v, str):  # a count, a ratio, or a measurement that could not run
                rows.append((f"conversion {k}", v))
                continue
            rows.append((f"conversion {k} (words/s)", fmt(v)))
        ceiling = matmul_ceiling(R, torch.device("cpu"))
        allowed = ceiling[0] / (flops * 1e9)
        rows += [
            ("conversion: useful GFLOP per word (forward)", f"{flops:.5f}"),
            ("conversion: words/s the fp32 matmul ceiling allows", f"{allowed:,.0f}"),
            (
                "conversion: greedy fp32's share of that",
                f"{figures['greedy fp32'][0] / allowed:.0%}",
            ),
        ]
        for k, v in figures.items():
            if k.startswith("greedy fp32, TENSEVAE_PRODUCTS=") and not isinstance(v, str):
                rows.append((f"conversion: {k}, share", f"{v[0] / allowed:.0%}"))
    if "cold" in parts:
        for k, v in cold_convert(R).items():
            rows.append((f"cold one-off convert: {k}", fmt(v, digits=3)))
    backends = [("no-server default", {})] if "jobs" in parts else []
    if args.servers and "jobs" in parts:
        backends.append(("Redis + PostgreSQL", SERVERS))
    cores = os.cpu_count() or 1
    half = max(1, cores // 2)  # each of two workers' threads (benchmarks/_jobs.py)
    allow = None
    if backends and cores > 1:
        allow = cores_allow(R, half)
        rows.append(
            (
                f"two conversion processes of {half} thread(s) at once over one, no queue "
                "(what the cores allow)",
                fmt(allow, "x", 2),
            )
        )
    for name, env in backends:
        with tempfile.TemporaryDirectory() as home:
            env = {**env, "TENSEVAE_HOME": home}
            figs = job_figures(env, args.bulk_lines, R, args.bulk_repeats)
        for k, v in figs.items():
            rows.append((f"{name}: {k}", fmt(v, digits=3 if "latency" in k else 0)))
        bulk = {k.split(", ", 1)[1]: v[0] for k, v in figs.items() if k.startswith("bulk")}
        one = bulk[f"1 worker(s) of {cores} thread(s) (lines/s)"]
        two = bulk[f"2 worker(s) of {half} thread(s) (lines/s)"]
        single = bulk[f"1 worker(s) of {half} thread(s) (lines/s)"]
        rows.append((f"{name}: two workers over one worker with every core", f"{two / one:.2f}x"))
        rows.append(
            (f"{name}: two workers of {half} thread(s) over one of {half}", f"{two / single:.2f}x")
        )
        if allow is not None:
            rows.append(
                (
                    f"{name}: two workers of {half} thread(s) over one, share of what the cores allow",
                    f"{two / single / allow[0]:.0%}",
                )
            )
        if "convert" in parts:
            share = one / figures["greedy fp32"][0]
            rows.append(
                (f"{name}: bulk, one worker, share of in-process greedy fp32", f"{share:.0%}")
            )
    where = (
        f"GPU {torch.cuda.get_device_name(device)} for the training figures"
        if device.type == "cuda"
        else "no GPU"
    )
    header = (
        f"# tensevae speed benchmark\n\nCommand: `python benchmarks/speed.py {' '.join(sys.argv[1:])}`  \n"
        f"Run: {_host.span(started)}  \n"
        f"Machine: {_host.cpu()}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{where}. Median (min-max) over {R} repeats (bulk jobs: {args.bulk_repeats}); in-process "
        "conversion after one untimed pass, a lower precision timed in turn with fp32. Workers share "
        "the cores out: a lone worker runs one torch thread per core, two run half as many each.\n\n| figure | value |\n|---|---|\n"
    )
    text = header + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
