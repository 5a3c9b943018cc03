"""The prompt policy: banned terms in Chinese and English, personal-data detectors, hot reload.

    terms.py          the term-list file format and its parser
    normalise.py      the folding that defeats spacing, zero-width, full-width, traditional and
                      look-alike evasions, with a map back to original positions
    pii.py            resident ID, bank card, mobile number and e-mail detectors
    prompt_policy.py  PromptPolicy: one Aho-Corasick pass, per-role actions, the allow-list
    verdict.py        Verdict and Finding; `Verdict.audit_fields()` is all the audit trail gets
    holder.py         PolicyHolder: loads the configured lists, swaps policies atomically on reload
    lists/            the lists shipped with zguard (`builtin:guide`, `builtin:bank`)

Everything but holder.py is pure: text in, verdicts out. Importing this package loads nothing
heavy; OpenCC, the automaton and pypinyin load when a policy is built.
"""
