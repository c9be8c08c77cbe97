"""What app.py builds once and every request shares: conversion slots, the download
cache, the read replica's watcher, metrics, logging, and the keys handlers find them by."""
