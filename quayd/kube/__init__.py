"""Units to Kubernetes manifests and back (``quayctl export kube``, ``quayctl import kube``).

Pure: dictionaries in, dictionaries out. :mod:`quayd.kube.table` is the mapping table that
docs/units.md shows; :mod:`quayd.kube.export` and :mod:`quayd.kube.importer` follow it.
"""
