"""Evaluation of answers: hooks the operator writes (`hooks`: the protocol a hook implements and
what it is given; `loading` and `runner`: loading hooks and running them within their budgets) and
cascades (`judging`: which calls cascade, in what order, and whether an answer is kept; `checks`:
the built-in checks). The config section is `config`'s."""
