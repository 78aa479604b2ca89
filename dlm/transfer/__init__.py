"""Moving bytes: one backend per storage interface behind the ``Backend`` protocol (``base``), made by
``backends.make_backend``. Nothing is imported here, so that the client can use ``base``'s errors
without loading the S3 stack."""
