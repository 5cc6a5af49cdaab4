"""The node types: triggers, logic, HTTP, AI and integrations. ``registry`` lists them."""
