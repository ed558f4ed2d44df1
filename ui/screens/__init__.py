"""The app's screens: checkout (the default screen) and setup (a modal)."""
