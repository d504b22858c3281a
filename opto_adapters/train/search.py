"""The Pareto search (``search="pareto"``): a pool of candidates instead of one incumbent.

The pool starts with the app's own values (the seed), scored on every validation example.
Each step draws parents from the pool's Pareto front (``pareto``: weighted by how many
examples each leads on, seeded by ``config.seed`` and the step number) and, for each:

1. **reflective mutation**: runs the parent on the step's training minibatch with graphs,
   gives the optimizer those graphs and their feedback (the whole program's trace) and asks
   for new values;
2. **minibatch acceptance**: scores the child on the same minibatch; only a child strictly
   better there than its parent is scored on the full validation set and joins the pool. A
   rejected child is never validated: it is stored as rejected with the reason, and the
   optimizer remembers it (as in the greedy search).

With ``merge=True``, a step that follows a new pool member first tries a **merge**: two pool
members that descend from a common ancestor and changed different parameters are combined
(each changed parameter from the one that changed it); the merge is validated if it is at
least as good on the minibatch as the better of its two parents. With ``objectives=("score", "tokens")`` the app's own tokens per
evaluation (as its model reported them) are one more objective: the front also keeps a
candidate that is cheaper than every one at least as good as it, the cheapest pool member
counts as leading on one more "example" when parents are drawn, and a mutation passes the
minibatch gate when it scores as well as its parent there with fewer tokens.
``proposals_per_step=k``
makes up to k children per step from different parents (fewer while the front has fewer
candidates; proposed one after the other, then scored).

The starting values are scored on the validation split only (the greedy search also runs them
on the whole training set first): their training score in the result is the mean over the
minibatches they ran on. Without ``val`` the training set is the validation set (each pool member is scored on every
training example). The best pool member by mean validation score is the run's best (written
back into the app). The pool, every candidate's parents and the front are stored
(``Store.pool``, ``Store.lineage``), the score matrix is the pool's stored evaluations, so a
resumed run rebuilds the same pool and draws the same parents, and evaluates nothing twice.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .acceptance import accept
from .engine import Result, by_example, mean
from .errors import AppError
from .pareto import EPS, find_merge, pareto_front, sample_parents
from .store import StoredPoolMember
from .trainer import NOTHING_TO_LEARN, no_change_reason, nothing_to_learn

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["ParetoSearch"]

logger = logging.getLogger("opto_adapters.train")


@dataclass
class _Child:
    """One child of a step: what it came from and the candidate recorded for it."""

    k: int
    kind: str  # mutation or merge
    parents: list[int]
    parent_results: list[list[Result]]  # each parent on the minibatch
    candidate_id: int | None = None
    values: dict[str, Any] | None = None  # the suggestion, relative to parents[0]
    note: str = ""  # why there is no candidate


class ParetoSearch:
    """Runs the Pareto search for a ``Trainer`` (its store, evaluator, optimizer and settings)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.split = "val" if trainer.val else "train"
        self.indices = list(range(len(trainer.examples[self.split])))
        self._values: dict[int, dict[str, Any]] = {}

    # -- the pool ------------------------------------------------------------------------------

    def values(self, version: int) -> dict[str, Any]:
        if version not in self._values:
            self._values[version] = self.t.store.version_values(version)
        return self._values[version]

    def pool(self, before_step: int | None = None) -> list[StoredPoolMember]:
        """The pool members (those that joined before ``before_step``, if given)."""
        members = self.t.store.pool(self._run_id)
        return [m for m in members if before_step is None or m.step < before_step]

    def scores(self, versions: list[int]) -> dict[int, list[float]]:
        """The score matrix of ``versions`` on the validation split."""
        matrix = self.t.store.score_matrix(self._run_id, versions, self.split, len(self.indices))
        fallback = float(self.t.config.error_score)
        return {v: [fallback if s is None else s for s in row] for v, row in matrix.items()}

    def front_scores(self, versions: list[int]) -> dict[int, list[float]]:
        """What the front is kept over: the score matrix, with ``objectives=("score",
        "tokens")`` one more column, minus the app's tokens per evaluation on the validation
        split (a version whose model reported none counts as the most expensive)."""
        scores = self.scores(versions)
        if "tokens" not in self.t.config.objectives:
            return scores
        usage = self.t.store.app_usage(self._run_id, self.split)
        return {v: [*row, -_tokens(usage.get(v))] for v, row in scores.items()}

    def _run(
        self, version: int, split: str, indices: list[int], phase: str, step: int | None, *, graphs: bool = False
    ) -> list[Result]:
        """Results of a version (its values written into the app first; stored ones reused)."""
        self.t._write(self.values(version))
        return self.t._evaluate(version, split, indices, phase, step=step, graphs=graphs)

    def _store_front(self) -> list[int]:
        order = [m.version_id for m in self.pool()]
        front = pareto_front(self.front_scores(order))
        self.t.store.set_front(self._run_id, front)
        return front

    @property
    def _run_id(self) -> int:
        assert self.t.run_id is not None
        return self.t.run_id

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Search until the steps (or a limit) run out; the app holds the current (best)
        values afterwards, however the search stopped."""
        try:
            self._steps()
        finally:  # a stop mid-step leaves a parent's or a child's values in the app
            try:
                self.t._write(self.values(self.t._current))
            except Exception:  # the stop's own error matters more
                logger.exception("could not write the current values back after the search stopped")

    def _steps(self) -> None:
        t = self.t
        if not t.val:
            logger.info(
                "no val: the Pareto search scores each candidate on the whole training set "
                "(%d examples) to build its front", len(t.train),
            )
        if not self.pool():
            self._seed()
        t._run_steps(self._step)

    def _seed(self) -> None:
        """Score the starting values on the validation split: the pool's first member."""
        t = self.t
        seed = t._baseline
        results = self._run(seed, self.split, self.indices, "baseline", None, graphs=self.split == "train")
        t._check_app_runs(results, self.split)
        t.store.add_pool_member(self._run_id, seed, step=0, kind="seed")
        self._store_front()
        t._consider_best(seed, mean(results))

    def _plan(self, step: int, pool: list[StoredPoolMember]) -> list[tuple[str, list[int], dict[str, Any] | None]]:
        """(kind, parents, merged values) of each child of ``step``, from the pool before it."""
        cfg = self.t.config
        order = [m.version_id for m in pool]
        scores = self.scores(order)
        plan: list[tuple[str, list[int], dict[str, Any] | None]] = []
        if cfg.merge and len(order) > 2:
            merge = self._merge(step, pool, order, scores)
            if merge is not None:
                plan.append(("merge", [merge.a, merge.b], merge.values))
        rng = random.Random(f"pareto:{cfg.seed}:{step}")
        for parent in sample_parents(self.front_scores(order), cfg.proposals_per_step - len(plan), rng):
            plan.append(("mutation", [parent], None))
        return plan

    def _merge(self, step: int, pool: list[StoredPoolMember], order: list[int], scores: dict[int, list[float]]) -> Any:
        """The merge to try at ``step``, if one is due (the pool grew since the last try)."""
        store = self.t.store
        steps = {c.id: c.step for c in store.candidates(self._run_id)}
        merges = [
            (steps[cid], parents) for cid, (kind, parents) in store.lineage(self._run_id).items()
            if kind == "merge" and cid in steps and steps[cid] < step
        ]
        last = max((s for s, _ in merges), default=0)
        if not any(m.step > last for m in pool):
            return None
        return find_merge(
            order, scores, {m.version_id: m.parents for m in pool},
            {v: self.values(v) for v in order}, tried=[frozenset(p) for _, p in merges],
            front=pareto_front(self.front_scores(order)),
        )

    def _step(self, step: int, epoch: int, b: int, batch: list[int]) -> None:
        t, store, run_id = self.t, self.t.store, self._run_id
        pool = self.pool(before_step=step)
        plan = self._plan(step, pool)
        store.start_step(run_id, step, epoch=epoch, batch=b, indices=batch, version_id=plan[0][1][0])
        everything = store.candidates(run_id, step)
        lineage = store.lineage(run_id)
        stored = {  # a resumed step's children, by what they came from (unanswered: asked again)
            (lineage[c.id][0], tuple(lineage[c.id][1])): c
            for c in everything if c.status != "failed" and c.id in lineage
        }
        self._next_k = max((c.k for c in everything), default=-1) + 1
        children: list[_Child] = []
        asking: list[tuple[_Child, Any]] = []
        for k, (kind, parents, merged) in enumerate(plan):
            child, request = self._prepare(step, k, kind, parents, merged, batch, stored.get((kind, tuple(parents))))
            children.append(child)
            if request is not None:
                asking.append((child, request))
            if k == 0:
                first = children[0].parent_results[0]
                gate = self.scores([parents[0]])[parents[0]]
                store.update_step(run_id, step, train_score=mean(first), gate_score=sum(gate) / len(gate))
        sent = t._send([request for _, request in asking])  # all children's requests at once
        for (child, _), proposal in zip(asking, sent, strict=True):
            if isinstance(proposal, BaseException):
                continue  # raised below, once the others are stored
            child.candidate_id = t._store_proposal(step, self._take_k(), proposal, lineage=(child.kind, child.parents))
            child.values = proposal.values or None
            child.note = "" if proposal.values else no_change_reason(proposal)
        t._raise_if_unanswered(step, sent)
        outcomes = [self._try_child(step, child, batch) for child in children]
        accepted = [(c, o) for c, o in zip(children, outcomes, strict=True) if o[0] == "accepted"]
        statuses = {o[0] for o in outcomes}
        status = "accepted" if accepted else "rejected" if "rejected" in statuses else "no_change"
        reason = "; ".join(f"child {c.k + 1} ({c.kind} of {_names(c.parents)}): {o[1]}" for c, o in zip(children, outcomes, strict=True))
        self._store_front()
        t._current = t._best
        t._write(self.values(t._best))
        store.update_run(run_id, current_version_id=t._best)
        first_accepted = accepted[0] if accepted else None
        store.finish_step(
            run_id, step, memory=t._memory_state(), status=status, reason=reason,
            accepted_candidate_id=first_accepted[0].candidate_id if first_accepted else None,
            result_version_id=first_accepted[1][2] if first_accepted else t._best,
            val_score=t._best_score if t.val else None, finished_at=time.time(),
        )
        logger.info("step %d: %s (%s)", step, status, reason)
        if t._steps_bar is not None:
            t._steps_bar.set_postfix_str(f"pool {len(pool) + len(accepted)} best {t._best_score or 0:.3g}")
        if t._evaluator is not None:  # keep the cached graphs of pool members only
            members = {m.version_id for m in self.pool()}
            t._evaluator.cache = {k: g for k, g in t._evaluator.cache.items() if k[0] in members}

    # -- one child -----------------------------------------------------------------------------

    def _take_k(self) -> int:
        k, self._next_k = self._next_k, self._next_k + 1
        return k

    def _prepare(
        self, step: int, k: int, kind: str, parents: list[int], merged: dict[str, Any] | None,
        batch: list[int], stored: Any,
    ) -> tuple[_Child, Any]:
        """Run the parent(s) on the minibatch; a merge records its combined values, a mutation
        makes its optimizer request from the parent's runs (sent with the step's others), unless
        the step was stored. Returns the child and its request (``None``: nothing to ask)."""
        t = self.t
        if kind == "merge":
            results = [self._run(p, "train", batch, "step", step) for p in parents]
            child = _Child(k, kind, parents, results)
            assert merged is not None
            base = self.values(parents[0])
            values = {n: v for n, v in merged.items() if base.get(n) != v}
            if stored is None:
                child.candidate_id = t.store.add_candidate(
                    self._run_id, step, self._take_k(), values=values,
                    reasoning=f"merge of {_names(parents)}: each parameter one of them changed, from the one that changed it",
                    status="pending", lineage=(kind, parents),
                )
            else:
                child.candidate_id = stored.id
            child.values = values
            return child, None
        forward = self._run(parents[0], "train", batch, "step", step, graphs=True)
        child = _Child(k, kind, parents, [forward])
        if stored is not None:
            child.candidate_id = stored.id
            child.values = stored.values or None
            child.note = stored.reason or ""
            return child, None
        if nothing_to_learn(forward):
            child.note = NOTHING_TO_LEARN
            return child, None
        opt = t.optimizer
        opt.zero_feedback()
        for r in forward:
            if r.graph is not None:
                opt.backward(r.graph, r.feedback)
        if not opt.feedback_subgraphs():
            raise AppError(
                f"the feedback on step {step}'s minibatch reached none of the parameters "
                f"{sorted(t._by_name)}: the app's output must be computed from them (through "
                "@bundle operations, or the framework tracer's graph)"
            )
        t._check_time()
        return child, t._request()  # made from this parent's values and runs, sent later

    def _try_child(self, step: int, child: _Child, batch: list[int]) -> tuple[str, str, int | None]:
        """Score a child on the minibatch, then (if it passes) on the validation split;
        returns (status, reason, version id)."""
        t, store, run_id = self.t, self.t.store, self._run_id
        cid = child.candidate_id
        if cid is None or not child.values:
            return "no_change", child.note or "no candidate", None
        base = self.values(child.parents[0])
        full = {**base, **{n: v for n, v in child.values.items() if n in t._by_name}}
        if full == base:
            why = "the suggestion changed no value"
            store.update_candidate(cid, status="no_change", reason=why)
            return "no_change", why, None
        copied = t._refuse_if_copied(step, cid, child.values, base)  # before any app run
        if copied is not None:
            return "rejected", copied, None
        try:
            t._write(full)
        except Exception as exc:  # a value that became invalid, or a failing binding
            why = f"could not be applied: {exc}"
            store.update_candidate(cid, status="no_change", reason=why)
            return "no_change", why, None
        version = store.version(run_id, t._values(), parent_id=child.parents[0], step=step)
        store.update_candidate(cid, version_id=version)
        if any(m.version_id == version and m.candidate_id != cid for m in self.pool()):  # not itself, on resume
            known = self.scores([version])[version]
            why = f"the same values as pool candidate v{version} ({self.split} score {sum(known) / len(known):.4g}); nothing new"
            store.update_candidate(cid, status="rejected", reason=why)
            if child.kind == "mutation":
                t._remember(child.values, why, "train", child.parent_results[0], child.parent_results[0])
            return "rejected", why, None
        results = t._evaluate(version, "train", batch, "candidate", step=step)
        passed, why = self._accept_on_minibatch(child, results, version, batch)
        if not passed:
            store.update_candidate(cid, score=mean(results), status="rejected", reason=why)
            if child.kind == "mutation":
                t._remember(child.values, why, "train", child.parent_results[0], results)
            return "rejected", why, None
        val = t._evaluate(version, self.split, self.indices, "candidate", step=step)
        score = mean(val)
        why += f"; {self.split} score {score:.4g} on all {len(val)} examples"
        if t.config.acceptance_rule == "bootstrap":  # noise-aware: against the (first) parent
            parent = t._evaluate(child.parents[0], self.split, self.indices, "candidate", step=step)
            decision = accept(
                by_example(val), by_example(parent), tolerance=t.config.tolerance,
                confidence=t.config.confidence, seed=t.config.seed * 1_000_003 + step * 1_009 + cid,
            )
            store.update_candidate(cid, ci_low=decision.interval.low, ci_high=decision.interval.high)
            why += f"; vs parent v{child.parents[0]}: {decision.reason}"
            if not decision.accepted:
                store.update_candidate(cid, score=score, status="rejected", reason=why)
                if child.kind == "mutation":
                    t._remember(child.values, why, self.split, parent, val)
                return "rejected", why, None
        store.update_candidate(cid, score=score, status="accepted", reason=why)
        store.add_pool_member(run_id, version, step=step, kind=child.kind, parents=child.parents, candidate_id=cid)
        self._store_front()
        t._consider_best(version, score)
        return "accepted", why, version

    def _accept_on_minibatch(
        self, child: _Child, results: list[Result], version: int, batch: list[int]
    ) -> tuple[bool, str]:
        """Whether a child is worth validating, and why: a mutation must score strictly
        better than its parent on the minibatch (or, with the tokens objective, as well with
        fewer of the app's tokens per run), a merge at least as well as the better of its
        parents (it combines changes that each already passed)."""
        score = mean(results)
        parent_scores = [mean(r) for r in child.parent_results]
        if child.kind == "merge":
            bar = max(parent_scores)
            if score >= bar - EPS:
                return True, f"minibatch score {score:.4g} >= the better parent's {bar:.4g}"
            return False, f"minibatch score {score:.4g} < the better parent's {bar:.4g}; not validated"
        bar = parent_scores[0]
        if score > bar + EPS:
            return True, f"minibatch score {score:.4g} > parent's {bar:.4g}"
        if "tokens" in self.t.config.objectives and score >= bar - EPS:
            usage = self.t.store.app_usage(self._run_id, "train", indices=batch)
            mine, theirs = _tokens(usage.get(version)), _tokens(usage.get(child.parents[0]))
            if mine < theirs - EPS:
                return True, (
                    f"minibatch score {score:.4g} = parent's, with fewer app tokens per run "
                    f"({mine:.0f} < {theirs:.0f})"
                )
        return False, f"minibatch score {score:.4g} is not above the parent's {bar:.4g}; not validated"


def _tokens(usage: Any) -> float:
    """The app's tokens per evaluation of a usage record (infinite when none were reported)."""
    found = usage.tokens if usage is not None else None
    return math.inf if found is None else float(found)


def _names(versions: list[int]) -> str:
    return " and ".join(f"v{v}" for v in versions)
