"""Model folders shipped with Rotor (package data) and the script that makes them."""
