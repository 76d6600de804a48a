"""The flow side of the router: what happens to a study after its instances are stored.

`studies` owns every change of `Study.state`; `rules` and `routing` turn a complete study
into jobs; `queue` (a leaf) holds jobs and sends; `worker` runs one job; `dispatch` sends
the results; `retention` removes old finished studies; `ops` holds operator actions
(retry, replay).
"""
