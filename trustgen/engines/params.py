"""Task parameters for generation, validated once, with limits a user can read in the errors."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, get_type_hints

from trustgen.errors import UsageError

DECODINGS = ("greedy", "beam", "sample")
SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmsolver", "pndm", "ddpm")
MAX_PROMPT_CHARS = 4096
MAX_NEW_TOKENS = 1024
MAX_STEPS = 200
MAX_SIDE = 1024
SEED_LIMIT = 2**63


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise UsageError(msg)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A parameter class's resolved field types, once: resolving them compiles every annotation
    string (~0.5 ms), and every task is checked at each hop. Keys are our own parameter classes."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = get_type_hints(cls)
    return hints


def _check_types(obj: Any) -> None:
    """Exact types, field by field: an int field refuses 8.0 and True (bool is an int in Python, and
    a float that happens to be whole is still a different task on the wire); a float field takes an
    int, not a bool. Untrusted tasks arrive as decoded dicts, so this is the only type check."""
    for name, hint in _hints(type(obj)).items():
        v = getattr(obj, name)
        ok = type(v) is hint or (hint is float and type(v) is int)
        _check(ok, f"{name} must be {hint.__name__}, got {type(v).__name__} {v!r}")


def params_from_dict(cls: type[Any], params: Any) -> Any:
    """`cls` (TextParams or ImageParams) from an untrusted dict: unknown or missing keys are refused
    by name (UsageError) before the dataclass checks types and ranges."""
    _check(isinstance(params, dict), f"task parameters must be a map, got {type(params).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(str(k) for k in params if k not in names)
    _check(not unknown, f"unknown task parameter {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    _check("prompt" in params, "prompt is required")
    return cls(**params)


def _check_prompt(prompt: str) -> None:
    _check(isinstance(prompt, str) and prompt.strip() != "", "prompt must not be empty")
    _check(len(prompt) <= MAX_PROMPT_CHARS, f"prompt is longer than {MAX_PROMPT_CHARS} characters")
    try:  # a command-line argument that is not UTF-8 arrives holding lone surrogates
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError("prompt must be UTF-8 text (it holds bytes that are not)") from None


def _check_seed(seed: int) -> None:
    _check(isinstance(seed, int) and 0 <= seed < SEED_LIMIT, f"seed must be in [0, 2^63), got {seed}")


@dataclass(frozen=True)
class TextParams:
    prompt: str
    max_new_tokens: int = 64
    decoding: str = "greedy"
    num_beams: int = 4
    seed: int = 0
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    # The prompt is one user turn rendered by the model's chat template (which the model digest
    # covers, so worker and verifier render the same bytes) rather than raw text.
    chat: bool = False

    def __post_init__(self) -> None:
        _check_types(self)
        _check_prompt(self.prompt)
        _check(self.decoding in DECODINGS, f"unknown decoding {self.decoding!r}; choose one of {', '.join(DECODINGS)}")
        _check(
            1 <= self.max_new_tokens <= MAX_NEW_TOKENS,
            f"max-new-tokens must be in [1, {MAX_NEW_TOKENS}], got {self.max_new_tokens}",
        )
        _check(
            self.decoding != "beam" or 2 <= self.num_beams <= 16,
            f"num-beams must be in [2, 16] for beam search, got {self.num_beams}",
        )
        _check_seed(self.seed)
        _check(0.0 < self.temperature <= 100.0, f"temperature must be in (0, 100], got {self.temperature}")
        _check(self.top_k >= 0, f"top-k must be >= 0 (0 disables it), got {self.top_k}")
        _check(0.0 < self.top_p <= 1.0, f"top-p must be in (0, 1], got {self.top_p}")

    def to_dict(self) -> dict[str, Any]:
        # `chat` is written only when set: a raw-prompt task keeps the signed encoding it had
        # before the field existed (and a missing key reads back as False).
        d = asdict(self)
        if not self.chat:
            del d["chat"]
        return d


@dataclass(frozen=True)
class ImageParams:
    prompt: str
    seed: int = 0
    steps: int = 20
    guidance: float = 3.0
    height: int = 32
    width: int = 32
    scheduler: str = "ddim"

    def __post_init__(self) -> None:
        _check_types(self)
        _check_prompt(self.prompt)
        _check_seed(self.seed)
        _check(1 <= self.steps <= MAX_STEPS, f"steps must be in [1, {MAX_STEPS}], got {self.steps}")
        _check(0.0 <= self.guidance <= 50.0, f"guidance must be in [0, 50], got {self.guidance}")
        for name, v in (("height", self.height), ("width", self.width)):
            _check(8 <= v <= MAX_SIDE and v % 8 == 0, f"{name} must be a multiple of 8 in [8, {MAX_SIDE}], got {v}")
        _check(
            self.scheduler in SCHEDULERS, f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
