"""What operators see: the event stream inside the relay, metrics and the surge monitor."""
