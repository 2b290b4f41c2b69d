"""Pydantic request/response models: what each tool returns to the agent, compact and rounded."""
