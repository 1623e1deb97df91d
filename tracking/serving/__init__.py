"""``podium serve``: the scorers (ONNX or a weights-only state dict, never a pickle), the request's
inputs, the HTTP app and the server."""
