"""The prompt policy: banned terms in Chinese and English, personal-data detectors, hot reload.

    terms.py          the term-list file format and its parser
    normalise.py      the folding that defeats spacing, zero-width, full-width, traditional,
                      Japanese and look-alike evasions, with a map back to original positions
    confusables.py    look-alike characters from Unicode's UTS #39 data (data/confusables.txt)
    segment.py        the Chinese word segmenter (jieba's dictionary) that decides Chinese matches
    pii.py            resident ID, bank card, mobile number and e-mail detectors on a digit stream
    prompt_policy.py  PromptPolicy: one Aho-Corasick pass, word boundaries, per-role actions, the
                      allow-list
    verdict.py        Verdict and Finding; `Verdict.audit_fields()` is all the audit trail gets
    holder.py         PolicyHolder: loads the configured lists, swaps policies atomically on reload
    lists/            the lists shipped with zguard (`builtin:guide`, `builtin:bank`)
    data/             Unicode data the folding reads (with its source and version)

Everything but holder.py is pure: text in, verdicts out. Importing this package loads nothing
heavy; OpenCC, the automaton, pypinyin and rjieba load when a policy is built (the look-alike
table, a package data file, is read through importlib.resources at import).
"""
