"""Rules first, a model when unsure: a cheap classifier model asked for the task class and
difficulty of a prompt the rule classifier is unsure of, under a strict time budget, its answers
cached."""
