"""Local fakes of the platforms Kesu talks to; each records what it received."""
