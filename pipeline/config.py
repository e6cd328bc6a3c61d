"""Typed, frozen configurations, loaded from YAML and overridable with KEY=VALUE."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class ModelConfig:
    hidden_size: int = 256  # LSTM units, encoder and decoder
    latent_size: int = 32  # dimensions of z
    tense_embedding: int = 8  # size of the tense embedding (the condition c)
    char_embedding: int = 64  # size of a character's embedding
    bidirectional: bool = False  # encoder reads the word both ways
    attention: bool = False  # decoder attends to the encoder's character states
    context_dropout: float = 0.0  # share of training words whose decoder gets no attention
    decoder_input_z: bool = False  # z and the target tense join every decoder input
    # Whether the target tense joins z in the decoder's initial state. Without it the four
    # tenses of one z start from one state, and the tense enters at every step only (needs
    # decoder_input_z): the verb a z holds is set before the tense is known.
    decoder_init_tense: bool = True
    # In training, a word whose decoder attends gets z drawn from the prior instead of its
    # posterior: the attending path must then spell from the source characters (and so
    # generalise to new verbs), while the path without attention must spell from z alone.
    context_prior_z: bool = False
    # Of those attending words, the share that keep their posterior z all the same (and carry
    # the KL term): the attending path may then learn from z what characters cannot tell,
    # such as a trained irregular verb's past.
    context_posterior_share: float = 0.0
    # With attention: each step may also copy a source character, with the attention's
    # weights, mixed with the written distribution by a learned gate (a pointer-generator).
    # Words decoded without context never copy.
    copy: bool = False
    # With attention: a learned bias on the attention's scores for each offset, up to this
    # many characters either way, between a source character's place and the decoder's step
    # (0: off). English inflects at the end of a word, so step t mostly reads character t;
    # content alone loses its place in stems with repeated letters (withhold -> withold).
    position_bias: int = 0
    # Slots of a learned memory the decoder reads z through (0: off). Each slot has a key
    # in z's space and a value; z reads the values weighted by a softmax of its (scaled)
    # squared distances to the keys, so nearby z read one slot and the space of z is cut
    # into regions, each decoded as one verb. The read joins z and the tense as the
    # decoder's condition.
    latent_memory: int = 0
    latent_memory_size: int = 64  # size of a slot's value
    # log of the distance scale at the start of training (learned from there): higher reads
    # fewer slots at once, so the regions of z are sharper
    latent_memory_log_scale: float = 1.0
    # How z reads the memory: soft, the softmax's weighted mix of values; hard, the one
    # value of the slot with the highest weight (in training, the softmax's gradient passes
    # through as if the read were soft: a straight-through estimator). A hard read is the
    # same for every z in a slot's region, so the four tenses decoded from one z start from
    # one verb's value.
    latent_memory_read: str = "soft"
    # With a memory: whether z itself also joins the decoder's condition beside the read.
    # Without it, the decoder sees z only through the memory.
    latent_memory_z: bool = True
    # With a memory: 0, its keys learn by gradient; above 0, each key is instead the moving
    # average (this decay per training step) of the z that read its slot, and a key that
    # no z has read for a while moves onto the z farthest from any key (a vector
    # quantizer's codebook with restarts), so that every slot's region holds z.
    latent_memory_ema: float = 0.0
    max_length: int = 30  # most characters the decoder writes for one word
    dropout: float = 0.0  # on character embeddings and LSTM outputs, in training only


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0  # every random draw of a run derives from it
    epochs: int = 30
    batch_size: int = 64
    pairs: str = "same"  # same: word -> itself (the lab); cross: the 12 conversions; all: both
    optimizer: str = "adam"  # adam, adamw or sgd
    lr: float = 0.001
    lr_schedule: str = "constant"  # constant, or cosine: decays to lr_floor * lr by the end
    lr_floor: float = 0.05
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 turns clipping off
    kl_schedule: str = "monotonic"  # constant, monotonic or cyclical
    kl_max: float = 1.0  # the KL weight (beta) at its highest
    kl_warmup: float = 0.3  # monotonic: share of training spent rising to kl_max
    kl_cycles: int = 4  # cyclical: number of cycles
    kl_ratio: float = 0.5  # cyclical: share of a cycle spent rising
    free_bits: float = 0.0  # nats per latent dimension not penalised (0: off)
    free_nats: float = 0.0  # nats of a word's whole KL not penalised (0: off)
    # Weight of an MMD penalty between the batch's posterior samples and prior samples
    # (InfoVAE): it pulls the aggregate posterior onto N(0, I), so that noise drawn for
    # generation lands where the decoder was trained. 0: off.
    mmd_weight: float = 0.0
    # Weight of a loss that teaches the decoder, from z alone, the regions of N(0, I) between
    # the training verbs' posteriors: noise drawn from the prior is decoded (in a random
    # tense) toward the training verb whose posterior is likeliest at that point. 0: off.
    prior_weight: float = 0.0
    prior_words: int = 32  # prior draws per training step
    # Tenses each prior draw is decoded in: 1, a random one; 4, all four forms of the verb
    # from the same z, which trains the consistency across tenses that generation is scored on.
    prior_tenses: int = 1
    # Which training verb a prior draw is taught: posterior, the one whose posterior is
    # likeliest at that z; sp, the one whose simple present the decoder already writes from
    # that z (greedily, without dropout), where it writes one, else the likeliest posterior's;
    # rest, the likeliest posterior's in the simple present and, in the other three tenses,
    # the verb the decoder writes in the simple present. sp teaches the other tenses to follow
    # the verb the region already has, instead of moving it, but also keeps the simple present
    # where it is, so verbs that win regions keep them and win more; rest lets the simple
    # present learn the posteriors' regions, and the other tenses follow it.
    prior_anchor: str = "posterior"
    # With prior_anchor sp or rest: 0, any training verb the decoder writes is taken; k, only one
    # among the lines of the k forms whose posteriors are likeliest at that z. A verb that
    # regions follow grows with each step it wins; k keeps each region's verb one whose
    # posterior is near, so that the regions stay many.
    prior_anchor_top: int = 0
    # With prior_anchor sp or rest: 0, off; c, a verb is followed only while it has been the
    # target of fewer than c times the mean number of draws per training verb so far this
    # epoch (and at least c): no verb may take much more than its share of the prior.
    prior_anchor_cap: float = 0.0
    # With prior_anchor_cap: where a draw does not follow the verb written (none written, or
    # that verb over the cap), likeliest teaches it the verb whose posterior is likeliest at z,
    # even one over the cap; under_cap, the likeliest among those under it, so that no region
    # grows past the cap by the fallback either.
    prior_anchor_fallback: str = "likeliest"
    # With prior_anchor sp and prior_tenses 4: whether a draw that follows the verb the
    # decoder already writes from it in the simple present is taught that simple present
    # too (true), or only its three other forms (false): the row it would take is one the
    # decoder already writes, and a quarter of those rows are then free for more draws.
    prior_anchor_reteach: bool = True
    # Steps between re-encodings of every training form, whose posteriors the prior's draws
    # are scored against (each step also updates the forms it encodes, and every epoch
    # starts from a full re-encoding).
    prior_refresh: int = 25
    tf_start: float = 1.0  # teacher-forcing ratio at the start
    tf_end: float = 1.0  # ... and at the end
    tf_shape: str = "linear"  # constant, linear, cosine or step (halfway)
    word_dropout: float = 0.0  # share of decoder input characters replaced by <unk>
    # Share of each character's training target spread evenly over the alphabet (label
    # smoothing, on every decoded row: pairs, made-up stems, prior draws). The hardest pairs
    # are chosen by this smoothed loss too. Scoring and decoding are unaffected. 0: off.
    label_smoothing: float = 0.0
    # false: the epoch's hardest pairs (train.hard_pairs) train without label smoothing,
    # in both their passes, so the exceptions they mostly are keep their whole target.
    label_smoothing_hard: bool = True
    # With attention: a share of each batch's pairs added again under made-up stems (letters
    # the source and target share changed alike, the last 3 spared; pipeline.data
    # .made_up_stems), always decoded with attention and z from the prior: verbs no one has
    # seen, which only copying the stem gets right. 0: off.
    made_up_stems: float = 0.0
    # Which pairs made-up stems are drawn from: all, or only the lines that follow English's
    # spelling rules (pipeline.data.regular), so that a stem no one has seen is only ever
    # shown inflecting by rule, never by a verb's exception (take -> took).
    made_up_from: str = "all"
    # With attention: a share of each batch's pairs added again with one made-up prefix before
    # both words (the first 1 to 4 letters of a training verb: "take -> took" may come back
    # as "overtake -> overtook"; pipeline.data.made_up_prefixes), always decoded with
    # attention and z from the prior. English inflects at a word's end, whatever comes before
    # it: a verb no one has seen that ends in one the model knows (misgive, undo, gainsay)
    # is inflected as that one. A prefixed word that is a form of any line of the data (or of
    # the lab's test) is skipped, so nothing is taught about a real verb, held out or not. 0: off.
    made_up_prefixes: float = 0.0
    # Share of an epoch's pairs trained twice: the hardest, by their loss when last decoded
    # with attention (in the first epoch, a random share). The rule that attending learns is
    # met far more often than a verb's exceptions (take -> took): these pairs get a second
    # pass each epoch. A pair is known by all four of its parts (lie -> lay and lie -> lied
    # are two), a line given twice shares its pairs' losses, and made-up rows count for no
    # pair. 0: off.
    hard_pairs: float = 0.0
    # With hard_pairs and attention: the epoch's hardest pairs always attend, in both their
    # passes, instead of attending at context dropout's odds. They are chosen by their loss
    # with attention, and it is the attending path that conversion runs (go -> went, not
    # gent): a hard pair otherwise attends about once an epoch.
    hard_pairs_attend: bool = False
    # With hard_pairs: the share of the epoch's pairs (of them all, at most hard_pairs) that,
    # being the hardest of the hard, train a third time: the commonest verbs' exceptions
    # (go -> went) stay wrong after two passes. 0: off.
    hard_pairs_again: float = 0.0
    # Decay of an exponential moving average of the weights over steps (0.995 weighs about
    # the last 200 steps): each epoch is scored with the average, and the average is what
    # training hands back. The steps themselves run on the trained weights. 0: off.
    ema: float = 0.0
    val_fraction: float = 0.0  # share of verbs held out for validation (split by verb)
    max_lines: int = 0  # train on the first N lines only (smoke tests); 0: all
    select: str = "last"  # which epoch's weights to keep: last, or best on val_exact / bleu4
    device: str = "auto"  # auto (CUDA when present), cpu or cuda
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    eval_every: int = 1  # epochs between scores (BLEU-4, Gaussian, validation)
    eval_gaussian_draws: int = 1  # draws of 100 z for the per-epoch Gaussian score
    checkpoint_every: int = 1  # epochs between checkpoints offered to on_epoch


@dataclass(frozen=True)
class Config:
    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def replace(self, **sections: dict[str, Any]) -> Config:
        return from_dict(_merge(self.to_dict(), sections))


_SECTIONS = {"model": ModelConfig, "train": TrainConfig}


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _coerce(section: str, key: str, value: Any, kind: type) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "on"):
            return True
        if str(value).lower() in ("false", "no", "0", "off"):
            return False
    elif kind in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{section}.{key}: expected a number, got {value!r}")
        try:
            number = kind(value)
        except (TypeError, ValueError, OverflowError):  # int(inf) overflows
            pass
        else:
            if not math.isfinite(number):
                raise ConfigError(f"{section}.{key}: expected a finite number, got {value!r}")
            if kind is int and float(value) != number:
                raise ConfigError(f"{section}.{key}: expected a whole number, got {value!r}")
            return number
    elif kind is str and isinstance(value, str | int | float):
        return str(value)
    raise ConfigError(f"{section}.{key}: expected {kind.__name__}, got {value!r}")


def from_dict(data: dict[str, Any]) -> Config:
    """A Config from nested dicts; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError("a config must be a mapping with sections model and train")
    unknown = set(data) - {"name", *_SECTIONS}
    if unknown:
        raise ConfigError(f"unknown config section {sorted(unknown)[0]!r} (known: model, train)")
    built: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        given = data.get(section) or {}
        if not isinstance(given, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        types = {f.name: type(f.default) for f in fields(cls)}
        for key in given:
            if key not in types:
                raise ConfigError(
                    f"unknown config key {section}.{key}{_did_you_mean(section, key)}"
                )
        built[section] = cls(**{k: _coerce(section, k, v, types[k]) for k, v in given.items()})
    cfg = Config(name=str(data.get("name", "default")), **built)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    m, t = cfg.model, cfg.train
    checks = [
        (
            m.hidden_size > 0 and m.latent_size > 0 and m.tense_embedding > 0,
            "model sizes must be positive",
        ),
        (m.char_embedding > 0, "model.char_embedding must be positive"),
        (0.0 <= m.context_dropout <= 1.0, "model.context_dropout must lie in [0, 1]"),
        (
            0.0 <= m.context_posterior_share <= 1.0,
            "model.context_posterior_share must lie in [0, 1]",
        ),
        (m.max_length >= 2, "model.max_length must be at least 2"),
        (m.position_bias >= 0, "model.position_bias must be >= 0"),
        (
            m.position_bias == 0 or m.attention,
            "model.position_bias needs model.attention",
        ),
        (
            m.latent_memory >= 0 and m.latent_memory_size >= 1,
            "model.latent_memory must be >= 0 and model.latent_memory_size >= 1",
        ),
        (
            -5.0 <= m.latent_memory_log_scale <= 10.0,
            "model.latent_memory_log_scale must lie in [-5, 10]",
        ),
        (
            m.latent_memory_read in ("soft", "hard"),
            "model.latent_memory_read must be soft or hard",
        ),
        (0.0 <= m.latent_memory_ema < 1.0, "model.latent_memory_ema must lie in [0, 1)"),
        (
            m.latent_memory_z or m.latent_memory > 0,
            "model.latent_memory_z=false needs model.latent_memory",
        ),
        (
            m.decoder_init_tense or m.decoder_input_z,
            "model.decoder_init_tense=false needs model.decoder_input_z",
        ),
        (0.0 <= m.dropout < 1.0, "model.dropout must lie in [0, 1)"),
        (t.epochs >= 1 and t.batch_size >= 1, "train.epochs and train.batch_size must be >= 1"),
        (t.pairs in ("same", "cross", "all"), "train.pairs must be same, cross or all"),
        (t.optimizer in ("adam", "adamw", "sgd"), "train.optimizer must be adam, adamw or sgd"),
        (t.lr > 0, "train.lr must be positive"),
        (
            t.lr_schedule in ("constant", "cosine"),
            "train.lr_schedule must be constant or cosine",
        ),
        (0 <= t.lr_floor <= 1, "train.lr_floor must lie in [0, 1]"),
        (
            t.kl_schedule in ("constant", "monotonic", "cyclical"),
            "train.kl_schedule must be constant, monotonic or cyclical",
        ),
        (t.kl_cycles >= 1 and 0 < t.kl_ratio <= 1, "train.kl_cycles >= 1 and 0 < kl_ratio <= 1"),
        (0 <= t.kl_warmup <= 1, "train.kl_warmup must lie in [0, 1]"),
        (
            t.tf_shape in ("constant", "linear", "cosine", "step"),
            "train.tf_shape must be constant, linear, cosine or step",
        ),
        (0 <= t.tf_start <= 1 and 0 <= t.tf_end <= 1, "teacher-forcing ratios must lie in [0, 1]"),
        (0 <= t.word_dropout < 1, "train.word_dropout must lie in [0, 1)"),
        (0 <= t.label_smoothing < 1, "train.label_smoothing must lie in [0, 1)"),
        (
            t.label_smoothing_hard or (t.label_smoothing > 0 and t.hard_pairs > 0),
            "train.label_smoothing_hard=false needs train.label_smoothing and train.hard_pairs "
            "above 0",
        ),
        (0 <= t.made_up_stems <= 1, "train.made_up_stems must lie in [0, 1]"),
        (0 <= t.made_up_prefixes <= 1, "train.made_up_prefixes must lie in [0, 1]"),
        (0 <= t.ema < 1, "train.ema must lie in [0, 1)"),
        (
            t.made_up_stems == 0 or m.attention,
            "train.made_up_stems needs model.attention",
        ),
        (
            t.made_up_prefixes == 0 or m.attention,
            "train.made_up_prefixes needs model.attention",
        ),
        (t.made_up_from in ("all", "regular"), "train.made_up_from must be all or regular"),
        (0 <= t.val_fraction < 1, "train.val_fraction must lie in [0, 1)"),
        (0 <= t.hard_pairs <= 1, "train.hard_pairs must lie in [0, 1]"),
        (
            0 <= t.hard_pairs_again <= t.hard_pairs,
            "train.hard_pairs_again must lie in [0, train.hard_pairs]",
        ),
        (
            not t.hard_pairs_attend or (t.hard_pairs > 0 and m.attention),
            "train.hard_pairs_attend needs train.hard_pairs above 0 and model.attention"
            " (set train.hard_pairs_attend=false to go without them)",
        ),
        (t.max_lines >= 0, "train.max_lines must be >= 0"),
        (
            t.prior_weight >= 0 and t.prior_words >= 1 and t.prior_refresh >= 1,
            "train.prior_weight >= 0, prior_words >= 1, prior_refresh >= 1",
        ),
        (
            t.prior_anchor in ("posterior", "sp", "rest"),
            "train.prior_anchor must be posterior, sp or rest",
        ),
        (
            t.prior_anchor_top >= 0 and t.prior_anchor_cap >= 0,
            "train.prior_anchor_top and train.prior_anchor_cap must be >= 0",
        ),
        (
            t.prior_anchor_fallback in ("likeliest", "under_cap"),
            "train.prior_anchor_fallback must be likeliest or under_cap",
        ),
        (
            t.prior_tenses in (1, 4),
            "train.prior_tenses must be 1 (a random tense) or 4 (all four)",
        ),
        (
            t.select in ("last", "val_exact", "bleu4"),
            "train.select must be last, val_exact or bleu4",
        ),
        (
            t.select != "val_exact" or t.val_fraction > 0,
            "train.select=val_exact needs val_fraction > 0",
        ),
        (t.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda"),
        (
            t.eval_every >= 1 and t.checkpoint_every >= 1,
            "eval_every and checkpoint_every must be >= 1",
        ),
        (
            min(t.free_bits, t.free_nats, t.mmd_weight, t.kl_max, t.grad_clip) >= 0,
            "free_bits, free_nats, mmd_weight, kl_max, grad_clip >= 0",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _did_you_mean(section: str | None, name: str) -> str:
    """' (did you mean model.hidden_size?)' for a key close to real ones, else ''."""
    import difflib

    keys = [(s, f.name) for s, cls in _SECTIONS.items() for f in fields(cls)]
    names = sorted({n for _, n in keys})
    close = [n for n in names if n.startswith(name)] or difflib.get_close_matches(
        name, names, n=3, cutoff=0.7
    )
    shown = [f"{s}.{n}" for n in close[:3] for s, m in keys if m == n]
    if section in _SECTIONS:  # the same section's keys first
        shown.sort(key=lambda k: not k.startswith(section + "."))
    return f" (did you mean {' or '.join(shown[:3])}?)" if shown else ""


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """``KEY=VALUE`` items: ``train.epochs=5``, or a bare key when one section has it."""
    data = cfg.to_dict()
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE")
        if key == "name":
            data["name"] = text
            continue
        section, _, name = key.rpartition(".")
        if not section:
            owners = [s for s in _SECTIONS if name in data[s]]
            if len(owners) != 1:
                raise ConfigError(f"unknown config key {name!r}{_did_you_mean(None, name)}")
            section = owners[0]
        if section not in _SECTIONS or name not in data[section]:
            raise ConfigError(f"unknown config key {key!r}{_did_you_mean(section, name)}")
        data[section][name] = _parse_value(text)
    return from_dict(data)


def configs_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "configs"


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (a path, or a name in configs/ such as ``tiny``)."""
    import yaml

    p = Path(path) if path else configs_dir() / "default.yaml"
    if path and not p.exists() and not p.suffix:
        p = configs_dir() / f"{path}.yaml"
    if p.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not p.is_file():
        raise ConfigError(f"{path or p}: no such config file")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    data = data or {}
    if isinstance(data, dict):
        data.setdefault("name", p.stem)
    try:
        cfg = from_dict(data)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
    return apply_overrides(cfg, overrides or [])
