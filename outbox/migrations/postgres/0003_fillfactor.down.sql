ALTER TABLE __TABLE__ RESET (fillfactor);
