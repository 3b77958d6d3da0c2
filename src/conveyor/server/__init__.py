"""The control plane: ClearML's REST protocol over a SQL store."""
