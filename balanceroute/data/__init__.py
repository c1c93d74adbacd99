"""Preparing the inputs of real runs: public traces and datasets, and model weights.

Sources live in conf/ (``conf/data/default.yaml`` for datasets, ``hf_repo`` in ``conf/model/<name>.yaml`` for
weights); ``balanceroute prepare-data`` (:mod:`balanceroute.data.cli`) fetches them resumably, verifies them by
sha256 and places them atomically. See docs/prepare_data.md.
"""
