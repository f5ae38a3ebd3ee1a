"""The JSON forms of the domain's values: one encoder and one decoder per type.

The routes render their answers with these encoders and the client reads the
same answers with the matching decoders, so the API's JSON is described once
(the pydantic schemas in ``api`` describe it again for OpenAPI only). This
package sits right above ``domain`` and imports nothing else of ours.

What the service stores (idempotency answers, committed reservations, spool
entries) has its own versioned encoders in ``wire.stored``: renaming a field
of the API must never make an answer stored yesterday unreadable.
"""
