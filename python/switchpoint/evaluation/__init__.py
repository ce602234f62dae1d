"""Evaluation of answers: hooks the operator writes (`hooks`: the protocol a hook implements and
what it is given; `loading` and `runner`: loading hooks and running them within their budgets),
the built-in checks of a cascade (`checks`) and the config section (`config`). Where a call meets
them, which calls cascade and whether an answer is kept is the request path's
(`switchpoint.engine.evaluating`)."""
