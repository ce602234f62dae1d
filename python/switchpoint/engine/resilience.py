"""What to do when a provider call fails, decided in one place: retry the same deployment (with
exponential backoff, full jitter and Retry-After), move to the next model, move only to a model with
a larger context window, or give up. Also the circuit breaker per deployment."""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Collection
from enum import Enum

from switchpoint.config import BreakerConfig, RetryConfig
from switchpoint.errors import ErrorClass

log = logging.getLogger("switchpoint.resilience")


class Action(Enum):
    RETRY_SAME = "retry_same"
    NEXT_MODEL = "next_model"
    LARGER_CONTEXT = "larger_context"
    FAIL = "fail"


def action_for(error_class: ErrorClass, policy: RetryConfig, *, retries_used: int) -> Action:
    """The one decision: what a failure of this class means for the rest of the call."""
    if error_class in policy.retry_on and retries_used < policy.max_retries:
        return Action.RETRY_SAME
    if error_class == ErrorClass.CONTEXT_WINDOW:
        return Action.LARGER_CONTEXT
    if error_class in policy.next_model_on:
        return Action.NEXT_MODEL
    return Action.FAIL


def backoff_s(
    retry_number: int,
    policy: RetryConfig,
    retry_after_s: float | None,
    rng: Callable[[], float] = random.random,
) -> float:
    """Full jitter (uniform in [0, base x 2^n], capped), but never sooner than Retry-After: the
    provider said when it will take the call, and asking earlier only earns another 429."""
    ceiling = min(policy.max_delay_s, policy.base_delay_s * (2.0**retry_number))
    delay = rng() * ceiling
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)
    return delay


# Failures that say something about the deployment's health; the others (a bad request, a prompt
# too long, a refusal) are about one request and must not open a breaker for everybody.
_HEALTH_FAILURES = frozenset(
    {
        ErrorClass.RATE_LIMITED,
        ErrorClass.OVERLOADED,
        ErrorClass.SERVER_ERROR,
        ErrorClass.TIMEOUT,
        ErrorClass.CONNECT,
        ErrorClass.BAD_RESPONSE,
        ErrorClass.AUTH,
    }
)


class CircuitBreaker:
    """closed -> open on `consecutive_failures` in a row or a failure rate over the recent window;
    open -> half-open after `open_s`; half-open lets `half_open_trials` calls through at once and
    closes on a success, reopens on a failure."""

    def __init__(
        self,
        name: str,
        policy: BreakerConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        self.name = name
        self._policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state = "closed"
        self._opened_at = 0.0
        self._consecutive = 0
        self._recent: deque[bool] = deque(maxlen=policy.window)
        self._trials = 0
        self.opens = 0

    def rebind(self, on_change: Callable[[str, str, str], None]) -> None:
        """Report transitions to `on_change` from now on (a reload's new Breakers keeps this)."""
        self._on_change = on_change

    @property
    def policy(self) -> BreakerConfig:
        return self._policy

    @property
    def state(self) -> str:
        if self._state == "open" and self._clock() - self._opened_at >= self._policy.open_s:
            self._move("half_open", "cool-down over")
        return self._state

    def retry_after_s(self) -> float:
        if self.state != "open":
            return 0.0
        return max(self._opened_at + self._policy.open_s - self._clock(), 0.0)

    def allows(self) -> bool:
        """Whether a call may go to this deployment now (without taking a trial slot)."""
        state = self.state
        return state == "closed" or (
            state == "half_open" and self._trials < self._policy.half_open_trials
        )

    def begin(self) -> bool:
        """Take permission for one call; False when the breaker refuses it."""
        if not self.allows():
            return False
        if self._state == "half_open":
            self._trials += 1
        return True

    def record(self, error_class: ErrorClass | None) -> None:
        """The outcome of a call `begin` allowed: None for success."""
        if self._state == "half_open":
            self._trials = max(self._trials - 1, 0)
        if error_class is None:
            self._consecutive = 0
            self._recent.append(True)
            if self._state != "closed":
                self._move("closed", "trial call succeeded")
            return
        if error_class not in _HEALTH_FAILURES:
            return
        self._consecutive += 1
        self._recent.append(False)
        if self._state == "half_open":
            self._open(f"trial call failed ({error_class.value})")
        elif self._state == "closed":
            self._maybe_open(error_class)

    def release(self) -> None:
        """A call `begin` allowed ended without an outcome (cancelled): free its trial slot."""
        if self._state == "half_open":
            self._trials = max(self._trials - 1, 0)

    def _maybe_open(self, error_class: ErrorClass) -> None:
        policy = self._policy
        if self._consecutive >= policy.consecutive_failures:
            self._open(f"{self._consecutive} consecutive failures, last {error_class.value}")
            return
        if len(self._recent) >= policy.min_calls:
            rate = self._recent.count(False) / len(self._recent)
            if rate >= policy.failure_rate:
                self._open(f"failure rate {rate:.0%} over the last {len(self._recent)} calls")

    def _open(self, why: str) -> None:
        self._opened_at = self._clock()
        self._trials = 0
        self.opens += 1
        self._move("open", why)

    def _move(self, state: str, why: str) -> None:
        previous, self._state = self._state, state
        if state == "closed":
            self._consecutive = 0
            self._recent.clear()
        log.warning("circuit breaker %s: %s -> %s (%s)", self.name, previous, state, why)
        if self._on_change is not None:
            self._on_change(self.name, state, why)


class Breakers:
    """One breaker per deployment (model), created on first use from its provider's policy."""

    def __init__(
        self,
        policy_of: Callable[[str], BreakerConfig],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._policy_of = policy_of
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}
        self.transitions: deque[tuple[str, str, str]] = deque(maxlen=256)
        # Deployments whose breaker has left "closed" and not come back: every decision asks
        # whether any is, and with none (the usual case) looks at no breaker at all.
        self._not_closed: set[str] = set()

    def all_closed(self) -> bool:
        return not self._not_closed

    def refusing(self) -> dict[str, float] | None:
        """The models whose breaker refuses calls now, with the seconds until it tries again, for
        routing to mask; None when none does (every breaker closed: the common case)."""
        if not self._not_closed:
            return None
        refusing = {}
        for name in self._not_closed:
            breaker = self._breakers.get(name)
            if breaker is not None and not breaker.allows():
                refusing[name] = breaker.retry_after_s()
        return refusing or None

    def _changed(self, name: str, state: str, why: str) -> None:
        self.transitions.append((name, state, why))
        if state == "closed":
            self._not_closed.discard(name)
        else:
            self._not_closed.add(name)

    def get(self, model: str) -> CircuitBreaker:
        breaker = self._breakers.get(model)
        if breaker is None:
            breaker = CircuitBreaker(
                model,
                self._policy_of(model),
                clock=self._clock,
                on_change=self._changed,
            )
            self._breakers[model] = breaker
        return breaker

    def carry_over(self, previous: Breakers, models: Collection[str]) -> None:
        """After a config reload: keep the breakers of `models` (those still served by the same
        provider) whose policy is unchanged, state and failure counts included, so a reload
        neither re-admits a failing deployment nor forgets its recent failures. A deployment
        whose policy changed starts closed under the new one. The transition history is kept."""
        self.transitions = previous.transitions
        for name, breaker in previous._breakers.items():
            if name in models and breaker.policy == self._policy_of(name):
                self._breakers[name] = breaker
                breaker.rebind(self._changed)
                if breaker.state != "closed":
                    self._not_closed.add(name)
