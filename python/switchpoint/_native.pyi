"""Type stubs for the Rust extension (rust/py). Checked against the binary by mypy.stubtest."""

from collections.abc import Sequence
from typing import Any, Literal, TypeAlias, final

__all__ = [
    "BUILTIN_STRATEGIES",
    "EXACT_BELOW_BYTES",
    "REMEMBERED_FROM_BYTES",
    "TASK_CLASSES",
    "BookedBudget",
    "BpeEncoding",
    "BudgetState",
    "CoreError",
    "CreatedInstance",
    "Decision",
    "Denial",
    "Gate",
    "GateDenied",
    "LatencyTracker",
    "Level",
    "LimitState",
    "LimitUsage",
    "LongWork",
    "ModelSpec",
    "ModelTable",
    "NoRoom",
    "OverheadHistogram",
    "Percentiles",
    "PredictedQuality",
    "RouteCount",
    "RouteTally",
    "Routed",
    "Router",
    "RuleActivity",
    "RuleBook",
    "RuleIds",
    "ScoredModel",
    "TokenSpan",
    "WorkStop",
    "capability_bits",
    "count_prompt_tokens",
    "count_text_tokens",
    "describe_scope",
    "prompt_token_span",
    "quota_message",
    "retry_wait",
]

# Which rule refused: a requests- or tokens-per-minute bucket, concurrency, a budget, or (shared
# state) this replica's lease of a rate limit's per-minute pool.
_DenialKind: TypeAlias = Literal["rpm", "tpm", "concurrency", "budget", "rpm-lease", "tpm-lease"]

class CoreError(Exception):
    """Raised by the Rust core; message says what was wrong."""

class GateDenied(CoreError):
    """Raised by Gate.reserve when a rate limit or budget refuses the call.

    `args` is `(kind, name, retry_after_s)`, also readable as the properties below; `str()` is a
    sentence for logs. Catch it before `CoreError`, which it subclasses:

        try:
            reservation = gate.reserve(limits, budgets, tokens, cost_usd, time.time())
        except GateDenied as denied:
            wait = denied.retry_after_s  # denied.kind, denied.name say which rule
    """

    @property
    def kind(self) -> _DenialKind:
        """Which limit refused: requests or tokens per minute, concurrency, a budget, or this
        replica's lease of a shared rate limit ("rpm-lease", "tpm-lease": more lease may help)."""
    @property
    def name(self) -> str:
        """The refusing rate limit's or budget's name."""
    @property
    def retry_after_s(self) -> float:
        """Seconds until the call could pass at the earliest.

        Bucket refill time for rpm/tpm; the window's end for a budget whose settled spend alone
        blocks it (inf for a "total" budget), or the minute's end for a rate lease this replica's
        own usage has filled the whole limit of; 0.05 when only calls in flight (concurrency, a
        budget's reservations) or a lease stand in the way, since those can clear at any moment.
        """

@final
class ModelSpec:
    """One model row of the routing table, as loaded from config."""

    name: str
    input_per_mtok: float
    output_per_mtok: float
    context_window: int
    quality: float
    ttft_prior_ms: float
    tpot_prior_ms: float
    capabilities: int
    def __new__(
        cls,
        name: str,
        *,
        input_per_mtok: float,
        output_per_mtok: float,
        context_window: int,
        quality: float,
        ttft_prior_ms: float,
        tpot_prior_ms: float,
        capabilities: int = 0,
    ) -> ModelSpec: ...
    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """What a call costs at this model's prices (the formula scoring and billing share)."""
    def prior_latency_ms(self, output_tokens: int) -> float:
        """The configured latency of a call producing `output_tokens`."""

@final
class LatencyTracker:
    """Per-model time-decayed latency histograms (total, TTFT, per output token).

    Slots are keyed by model name and survive table rebuilds, so reloading config keeps history.
    """

    def __new__(cls, half_life_s: float = 300.0) -> LatencyTracker: ...
    def slot(self, name: str) -> int:
        """The stable slot for `name`, created on first use."""
    def record(
        self, slot: int, total_ms: float, ttft_ms: float | None = None, output_tokens: int = 0
    ) -> None:
        """Record one successful call. tpot is derived as (total - ttft) / (output_tokens - 1)."""
    def percentiles(self, slot: int, kind: Literal["total", "ttft", "tpot"]) -> Percentiles:
        """The slot's percentiles of `kind`; zeros when there are no samples."""

@final
class Percentiles:
    """A slot's latency percentiles, in milliseconds."""

    @property
    def p50_ms(self) -> float: ...
    @property
    def p95_ms(self) -> float: ...
    @property
    def p99_ms(self) -> float: ...
    @property
    def samples(self) -> float:
        """The samples' decayed weights summed (a fresh sample weighs 1)."""

@final
class ModelTable:
    """The routing table: built once per config load, scored by the `Router` built over it."""

    def __new__(
        cls, models: list[ModelSpec], latency: LatencyTracker, min_samples: int = 20
    ) -> ModelTable: ...
    def __len__(self) -> int: ...
    def slot(self, index: int) -> int:
        """The latency-tracker slot of model `index`."""

@final
class Gate:
    """The token gate: rate limits and budgets, reserved before a call and settled after.

    Thread-safe; every call takes well under a microsecond and holds the GIL. `now` is Unix epoch
    seconds (`time.time()`): budgets turn at UTC hour, day and month boundaries. Rule ids are the
    ints `add_rate_limit` and `add_budget` return; a call names at most 16 rules in all.

    Rules of the accounting:
    - `reserve` takes one request, the estimated tokens and a concurrency slot from every listed
      rate limit and the estimated cost from every listed budget, or takes nothing and raises
      `GateDenied` naming the first refusing rule (limits in list order, then budgets).
    - A budget admits a reservation iff spent + reserved + cost <= capacity, where capacity is the
      limit, or min(limit, lease) while a lease is set.
    - `settle` charges the actual tokens and cost, more or less than reserved, to the window in
      which the call finished; reservations are carried across a rollover. `release` gives back
      the tokens, budget reservation and concurrency slot, but the request stays counted against
      RPM (the provider may have seen it).
    - Each reservation id is settled or released once; reusing one raises `CoreError` and changes
      nothing.
    - Spend can pass a budget only through calls that cost more than they reserved: at most the
      sum of (actual - estimate) over the calls in flight at the last admission.
    - A lease belongs to its window: at a rollover it becomes 0 until set again.
    - Rate-limit leases (shared state): a limit's RPM/TPM may also be capped by allowances for the
      fixed UTC minute holding `now`. A minute's usage is the calls finished in it (a request
      each, actual tokens; released calls no tokens) plus the calls in flight (a request each,
      estimated tokens; carried into the next minute). A reserve that would take usage past an
      allowance is refused with kind "rpm-lease" or "tpm-lease". The lease is checked after the
      rule's buckets and concurrency, so such a denial means only more lease is missing. At a
      minute boundary an allowance becomes 0 until set again.
    """

    def __new__(cls) -> Gate: ...
    def add_rate_limit(
        self,
        name: str,
        *,
        rpm: float | None = None,
        tpm: float | None = None,
        concurrency: int | None = None,
    ) -> int:
        """Adds a rate-limit rule and returns its id; each limit is optional."""
    def add_budget(
        self, name: str, *, limit_usd: float, window: Literal["hour", "day", "month", "total"]
    ) -> int:
        """Adds a budget and returns its id."""
    def limit_count(self) -> int:
        """Rate limits alive."""
    def budget_count(self) -> int:
        """Budgets alive."""
    def rule_slots(self) -> tuple[int, int]:
        """`(rate_limit_slots, budget_slots)`: the most rules of each kind alive at once."""
    def remove_rate_limit(self, limit: int) -> bool:
        """Frees a rate limit: True if freed, False (changing nothing) while a reservation names
        it. A freed rule's id names no rule from then on; its memory goes to later rules."""
    def remove_budget(self, budget: int) -> bool:
        """Frees a budget and forgets its spend: True if freed, False while a reservation names
        it."""
    def limit_activity(self, limit: int) -> RuleActivity:
        """Reservations naming the rate limit now, and the `now` of the last reserve, settle or
        release naming it (None if none did)."""
    def budget_activity(self, budget: int) -> RuleActivity:
        """`limit_activity` for a budget."""
    def check(
        self, limits: list[int], budgets: list[int], tokens: int, cost_usd: float, now: float
    ) -> Denial | None:
        """The first rule that would refuse the call, or `None`. Changes nothing."""
    def reserve(
        self, limits: list[int], budgets: list[int], tokens: int, cost_usd: float, now: float
    ) -> int:
        """Reserves the call against every listed rule, or nothing; raises `GateDenied` on refusal.

        Returns the reservation id to settle or release.
        """
    def settle(self, reservation: int, tokens: int, cost_usd: float, now: float) -> None:
        """The call finished having used `tokens` and cost `cost_usd`."""
    def release(self, reservation: int, now: float) -> None:
        """The call was abandoned at no cost; the request stays counted against RPM."""
    def budget_state(self, budget: int, now: float) -> BudgetState:
        """The budget's window as of `now`."""
    def set_budget_limit(self, budget: int, limit_usd: float) -> None: ...
    def set_leased(self, budget: int, leased_usd: float | None, now: float) -> None:
        """This replica's lease for the window holding `now`; `None` leaves allowance mode."""
    def take_unreported_spend(self, budget: int) -> float:
        """Settled spend since the previous call, for the shared store."""
    def set_limit_leased(
        self, limit: int, requests: float | None, tokens: float | None, now: float
    ) -> None:
        """This replica's allowances for the UTC minute holding `now`; `None` uncaps.

        Raises `CoreError` for an allowance that is negative or not finite, or for a limit (rpm,
        tpm) the rule does not have.
        """
    def take_unreported_usage(self, limit: int) -> tuple[int, int]:
        """`(requests, tokens)` of calls finished since the previous call, for the shared pool."""
    def limit_usage(self, limit: int, now: float) -> LimitUsage:
        """The UTC minute holding `now` as the lease cap counts it."""
    def limit_state(self, limit: int, now: float) -> LimitState:
        """The rate limit's buckets and calls in flight as of `now`."""
    def outstanding(self) -> int:
        """Reservations neither settled nor released."""

@final
class BudgetState:
    """A budget as of the `now` asked about. Window bounds are epoch seconds; a "total" budget's
    window is (0, inf)."""

    @property
    def limit_usd(self) -> float: ...
    @property
    def spent_usd(self) -> float:
        """Settled cost of the calls that finished in the current window."""
    @property
    def reserved_usd(self) -> float:
        """Estimates of the calls in flight."""
    @property
    def window_start_s(self) -> float: ...
    @property
    def window_end_s(self) -> float: ...
    @property
    def remaining_usd(self) -> float:
        """What the window still allows after settled and reserved spend; never negative."""
    @property
    def share_used(self) -> float:
        """Spent plus reserved as a share of the limit; 1 for a zero limit."""
    def fits(self, cost_usd: float) -> bool:
        """Whether a call estimated at `cost_usd` fits beside what is spent and reserved."""

@final
class LimitState:
    """A rate limit's buckets as of `now`. A bucket the rule does not have is None; a bucket may be
    negative after a call used more tokens than it reserved."""

    @property
    def requests_available(self) -> float | None: ...
    @property
    def tokens_available(self) -> float | None: ...
    @property
    def in_flight(self) -> int: ...

@final
class LimitUsage:
    """The UTC minute holding `now` as a rate limit's lease cap counts it; an allowance is None
    while uncapped."""

    @property
    def minute_start_s(self) -> float: ...
    @property
    def requests_done(self) -> int: ...
    @property
    def tokens_done(self) -> int: ...
    @property
    def requests_reserved(self) -> int: ...
    @property
    def tokens_reserved(self) -> int: ...
    @property
    def requests_leased(self) -> float | None: ...
    @property
    def tokens_leased(self) -> float | None: ...

# (cost, latency, quality) weights of the strategies every config has; `Router` adds them to the
# configured ones (a configured strategy of the same name replaces one).
BUILTIN_STRATEGIES: dict[str, tuple[float, float, float]]
# The classifier's task classes, chat (the default) last.
TASK_CLASSES: tuple[str, ...]

def capability_bits(per_model: Sequence[Sequence[str]]) -> tuple[list[str], list[int]]:
    """The capability bits of a config's models: every capability name in bit order (sorted), and
    each model's mask. CoreError on "models" beyond 64 distinct names."""

@final
class BpeEncoding:
    """A BPE encoding as tiktoken builds one: mergeable ranks and the pre-tokenizing pattern."""

    def __new__(cls, ranks: dict[bytes, int], pattern: str) -> BpeEncoding: ...
    @property
    def counter(self) -> str:
        """Which counter counts: "toktok" for tiktoken's own cl100k_base/o200k_base (pattern and
        ranks exactly tiktoken's), "regex" (tiktoken's pattern engine and merge) for any other."""

def describe_scope(scope: Sequence[tuple[str, str]]) -> str:
    """(key, value) pairs as instance names and shared state name them, keys sorted
    ("tenant=acme,stage=x"); CoreError for a key that is not a scope key."""

def quota_message(kind: str, name: str, retry_after_s: float) -> str:
    """What a refusal by a rate limit or budget says: "budget 'b' is exhausted; retry after
    3.6e+03s"."""

def retry_wait(retry_after_s: float) -> str:
    """When a refused call may pass: "retry after 3.6e+03s", or "no retry" for never."""

def count_text_tokens(text: str, encoding: BpeEncoding | None = None) -> int:
    """Tokens of `text` (special-token text counted as ordinary text); the ~4 characters per token
    estimate when `encoding` is None."""

def count_prompt_tokens(
    messages: Sequence[tuple[str, str]], encoding: BpeEncoding | None = None
) -> int:
    """Tokens of a prompt of (role, content) pairs, chat framing included."""

# Prompts of more bytes are routed on a TokenSpan unless a boundary lies within it.
EXACT_BELOW_BYTES: int
# Messages of at least this many bytes have their exact counts remembered by the router.
REMEMBERED_FROM_BYTES: int

@final
class TokenSpan:
    """Bounds on a prompt's cl100k and o200k counts, chat framing included, and the estimate
    between them that routing uses when no boundary lies within them."""

    @property
    def low(self) -> int: ...
    @property
    def high(self) -> int: ...
    @property
    def estimate(self) -> int: ...

def prompt_token_span(messages: Sequence[tuple[str, str]]) -> TokenSpan:
    """The TokenSpan of a prompt of (role, content) pairs: one pass over its bytes."""

@final
class Level:
    """Which level decided: switchpoint.v1.DecisionLevel, whose numbers these are."""

    OVERRIDE: Level
    STAGE: Level
    AUTO: Level
    FALLBACK: Level
    @property
    def name(self) -> str:
        """ "OVERRIDE", "STAGE", "AUTO" or "FALLBACK"."""
    @property
    def value(self) -> int:
        """The switchpoint.v1.DecisionLevel number."""
    def __index__(self) -> int: ...
    def __int__(self) -> int: ...
    def __hash__(self) -> int: ...
    def __eq__(self, value: object, /) -> bool: ...
    def __ne__(self, value: object, /) -> bool: ...
    @staticmethod
    def members() -> list[Level]:
        """Every level, in switchpoint.v1.DecisionLevel order."""

@final
class ScoredModel:
    """One ranked candidate of a decision."""

    @property
    def table_index(self) -> int:
        """The model's index in the registry and the scoring table."""
    @property
    def name(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def score(self) -> float: ...
    @property
    def norm_cost(self) -> float: ...
    @property
    def norm_latency(self) -> float: ...
    @property
    def quality(self) -> float: ...
    @property
    def estimated_cost_usd(self) -> float: ...
    @property
    def estimated_latency_ms(self) -> float: ...
    @property
    def latency_observed(self) -> bool:
        """Whether the latency estimate comes from observed calls rather than the prior."""
    @property
    def predicted(self) -> PredictedQuality | None:
        """The prediction `quality` came from; None when it is the model's configured prior."""

@final
class PredictedQuality:
    """A model's predicted quality for one request and the evidence behind it."""

    def __new__(cls, *, quality: float, evidence: float, similar: int, ok: int) -> PredictedQuality:
        """`quality` in [0, 1]; `evidence` (>= 0) the weight of the outcomes behind it;
        `similar` the similar prompts found for the model, `ok` those that scored >= 0.5."""
    @property
    def quality(self) -> float: ...
    @property
    def evidence(self) -> float: ...
    @property
    def similar(self) -> int: ...
    @property
    def ok(self) -> int: ...

@final
class Decision:
    """A routing decision: the ranked candidates, the level that decided and why."""

    @property
    def candidates(self) -> tuple[ScoredModel, ...]:
        """The ranked candidates, best first."""
    @property
    def chosen(self) -> ScoredModel:
        """The first candidate: the model a call tries first."""
    @property
    def level(self) -> Level: ...
    @property
    def reasons(self) -> tuple[str, ...]: ...
    @property
    def strategy(self) -> str: ...
    @property
    def weights(self) -> tuple[float, float, float]:
        """The strategy's (cost, latency, quality) weights as configured."""
    @property
    def input_tokens(self) -> int: ...
    @property
    def output_tokens(self) -> int: ...
    @property
    def task_class(self) -> str: ...
    @property
    def complexity(self) -> float: ...
    @property
    def request_id(self) -> str:
        """The request's id, for a later Feedback call."""
    @property
    def choice_probability(self) -> float:
        """The probability with which the first candidate was chosen: 1 unless exploring."""
    @property
    def confidence(self) -> float:
        """The rule classifier's confidence in its own reading, in [0, 1] (even when a given
        reading replaced it); 0 when the auto level did not decide."""
    @property
    def fallback(self) -> tuple[str, ...]:
        """Models to try after the candidates when every candidate fails, in chain order."""
    def encode(self) -> bytes:
        """The switchpoint.v1.RouteDecision message, serialized."""

@final
class Denial:
    """Why the gate would refuse a call: the first refusing rule and how long until it could
    pass."""

    @property
    def kind(self) -> _DenialKind: ...
    @property
    def name(self) -> str:
        """The refusing rule's name."""
    @property
    def retry_after_s(self) -> float: ...

@final
class RuleActivity:
    """Whether a rule may be freed: reservations naming it, and its last use."""

    @property
    def holds(self) -> int: ...
    @property
    def last_used_s(self) -> float | None: ...

class LongWork(CoreError):
    """Work asked on the event loop (WorkStop.on_loop) would count more bytes exactly, or for
    longer, than the loop allows: ask again from a worker thread."""

class NoRoom(CoreError):
    """A request needs a new rule instance and server.state.max_scopes are alive: free idle
    instances, then ask again."""

@final
class RuleIds:
    """The rule instances of one (tenant, stage, model)."""

    @property
    def limits(self) -> list[int]: ...
    @property
    def budgets(self) -> list[int]: ...

@final
class CreatedInstance:
    """A rule instance the book made, for its owner to register."""

    @property
    def kind(self) -> Literal["limit", "budget"]: ...
    @property
    def gate_id(self) -> int: ...
    @property
    def rule(self) -> int:
        """The rule's index among the config's limits or budgets."""
    @property
    def name(self) -> str:
        """ "name" or "name[tenant=acme]"."""
    @property
    def scope(self) -> list[tuple[str, str]]:
        """The scope's (key, value) pairs, keys sorted."""
    @property
    def scope_name(self) -> str:
        """The scope as names show it: tenant=acme,stage=x."""

@final
class BookedBudget:
    """A live budget instance: its rule's index, scope and gate id."""

    @property
    def rule(self) -> int: ...
    @property
    def scope(self) -> list[tuple[str, str]]: ...
    @property
    def gate_id(self) -> int: ...

@final
class RuleBook:
    """The config's rate limits and budgets over the gate: which rule instances a request selects,
    made on first use (at most `max_scopes` alive), for routing and reservations."""

    def __new__(
        cls, gate: Gate, *, limits: Any, budgets: Any, max_scopes: int, max_answers: int
    ) -> RuleBook:
        """`limits` and `budgets`: the config's LimitConfig and BudgetConfig lists, read by
        attribute name."""
    @property
    def empty(self) -> bool:
        """Whether no rule applies to anything."""
    @property
    def has_created(self) -> bool:
        """Whether instances were made and not yet taken."""
    def ids_for(self, tenant: str, stage: str, model: str, provider: str) -> RuleIds:
        """The instances that apply, made where missing; NoRoom past max_scopes."""
    def reserve(
        self,
        tenant: str,
        stage: str,
        model: str,
        provider: str,
        tokens: int,
        cost_usd: float,
        now: float,
    ) -> int | None:
        """Reserve the call against every rule that applies (as Gate.reserve); None when none
        does. GateDenied on refusal, NoRoom past max_scopes."""
    def take_created(self) -> list[CreatedInstance]:
        """The instances made since the last call."""
    def forget(self, kind_name: str, gate_id: int) -> None:
        """Forget an instance about to be freed, and every answer naming it."""
    def __len__(self) -> int:
        """Answers kept."""
    def refusal(
        self,
        tenant: str,
        stage: str,
        model: str,
        provider: str,
        tokens: int,
        cost_usd: float,
        now: float,
    ) -> Denial | None:
        """The first refusal against the rules' own limits, or None; reserves nothing."""
    def set_budget_limit(self, name: str, limit_usd: float, scope: list[tuple[str, str]]) -> int:
        """Set a budget's limit for live and later instances; returns the live ones changed."""
    def budget_instances(self) -> list[BookedBudget]: ...
    def adopt(
        self, previous: RuleBook, reset: list[str], follows_shared: bool
    ) -> list[tuple[Literal["limit", "budget"], int]]:
        """Take over `previous`'s instances of unchanged rules after a reload."""

@final
class Router:
    """The router of one config load. `decide` is every request's one decision: validation,
    budget pressure, the four levels, scoring, the gate's check and the open-breaker mask."""

    def __new__(
        cls,
        table: ModelTable,
        *,
        routing: Any,
        limits: Any,
        quota: RuleBook | None,
        providers: list[str],
        capabilities: list[str],
        disabled: list[tuple[str, str]],
        encodings: list[BpeEncoding | None],
    ) -> Router:
        """`routing` (RoutingConfig) and `limits` (server.limits) are read by attribute name."""
    def check_message_count(self, count: int) -> None:
        """Raise RequestTooLargeError when `count` messages are more than a request may carry."""
    def decide(
        self,
        request: Any,
        *,
        now: float,
        open_breakers: dict[str, float] | None = None,
        stop: WorkStop | None = None,
        classified: tuple[str, float] | None = None,
        note: str = "",
    ) -> Decision:
        """A ChatInput's one decision, as of `now` (the gate's clock); raises the engine's
        errors (InvalidRequestError, QuotaExceededError, ...), NoRoom past max_scopes, and
        DeadlineExceededError once `stop` is stopped. `classified` (task class, complexity)
        replaces the classifier's reading if the auto level decides; `note` follows the reading
        in the reasons."""
    def route(
        self,
        request: Any,
        *,
        now: float,
        stop: WorkStop | None = None,
        classified: tuple[str, float] | None = None,
        note: str = "",
    ) -> Decision:
        """The first half of `decide`: validated and routed, not yet admitted."""
    def admit(
        self,
        decision: Decision,
        *,
        tenant: str,
        stage: str,
        now: float,
        open_breakers: dict[str, float] | None = None,
    ) -> Decision:
        """The second half of `decide`: without the candidates the gate or an open breaker
        refuses now."""
    @property
    def remembered_counts(self) -> int:
        """Messages whose exact counts this router remembers (long messages of earlier requests)."""
    def route_wire(
        self,
        request: bytes,
        *,
        now: float,
        request_id: str = "",
        explore_draw: float = 1.0,
        open_breakers: dict[str, float] | None = None,
        tally: RouteTally | None = None,
        stop: WorkStop | None = None,
    ) -> Routed:
        """`decide` from switchpoint.v1.RouteRequest bytes, counted and timed in `tally`;
        InvalidRequestError on field "request" for bytes that are not a RouteRequest."""

@final
class Routed:
    """A Route call answered from its bytes: the RouteDecision bytes, and what its log line
    needs."""

    @property
    def request_id(self) -> str:
        """The request's id: its own, or the one `route_wire` was given."""
    @property
    def decision(self) -> bytes:
        """The switchpoint.v1.RouteDecision message, serialized."""
    @property
    def model(self) -> str:
        """The chosen model."""
    @property
    def tenant(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def prompt_chars(self) -> int:
        """The prompt's length in characters."""
    @property
    def choice_probability(self) -> float:
        """The probability with which `model` was chosen: 1 unless exploring."""

@final
class WorkStop:
    """A request's stop signal for work on a worker thread: due `timeout_s` from now (never when
    None) or once `stop()` is called; the token counting reads it every few thousand bytes."""

    def __new__(cls, timeout_s: float | None = None) -> WorkStop: ...
    @staticmethod
    def on_loop(counts_at_most: int, budget_s: float) -> WorkStop:
        """For one request's work on the event loop: at most `counts_at_most` bytes are counted
        exactly, for at most `budget_s` from now; LongWork is raised rather than count more."""
    def stop(self) -> None: ...
    @property
    def stopped(self) -> bool: ...

@final
class RouteTally:
    """Route calls answered by `Router.route_wire`, for the metrics."""

    def __new__(cls, bounds: Sequence[float]) -> RouteTally: ...
    def set_labels(self, tenants: list[str], stages: list[str], other: str) -> None:
        """From now on a tenant or stage outside `tenants` / `stages` (and not empty) is counted
        as `other`; counts already taken keep their labels."""
    def requests(self) -> list[RouteCount]:
        """The calls of every (model, tenant, stage) seen."""
    def overhead(self) -> OverheadHistogram:
        """The calls' routing time as a histogram."""

@final
class RouteCount:
    """Route calls of one (model, tenant, stage)."""

    @property
    def model(self) -> str: ...
    @property
    def tenant(self) -> str: ...
    @property
    def stage(self) -> str: ...
    @property
    def calls(self) -> int: ...

@final
class OverheadHistogram:
    """Route calls' routing time: calls per bucket (not cumulative; the last above every bound)
    and their sum in seconds."""

    @property
    def counts(self) -> list[int]: ...
    @property
    def sum_s(self) -> float: ...
