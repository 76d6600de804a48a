"""The DICOM network side of the router: the SCP that receives, the spool it writes to,
the bounds on what a peer may send, TLS, and C-ECHO.

Nothing here imports `hiprouter.router.flow` except `receive`, which counts each stored
instance for its study (`flow.studies.note_instance`) in the transaction that records it.
"""
