"""Data preparation: the offline synthetic corpus (a grammar, eSpeak NG through ctypes, manifests).

A program that *makes* data, apart from the training data path (:mod:`asr_ctc.data`), which only reads
manifests; its command line is ``asr-ctc-make-corpus`` (:func:`asr_ctc.cli.make_corpus_main`).
"""
