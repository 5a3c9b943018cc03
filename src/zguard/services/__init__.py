"""Services: what the HTTP layer asks for, behind interfaces the app factory wires up."""
