-- sqlite_master of a database created by Arena at commit c54befb (make_engine of that commit's db/).
CREATE TABLE runs (
	id INTEGER NOT NULL,
	created_at DATETIME NOT NULL,
	started_at DATETIME,
	finished_at DATETIME,
	status VARCHAR(16) NOT NULL,
	framework VARCHAR(32) NOT NULL,
	model VARCHAR(64) NOT NULL,
	dataset VARCHAR(64) NOT NULL,
	group_tag VARCHAR(64),
	spec JSON NOT NULL,
	environment JSON,
	summary JSON,
	error TEXT,
	epoch INTEGER NOT NULL,
	total_epochs INTEGER NOT NULL,
	step INTEGER NOT NULL,
	total_steps INTEGER,
	hostname VARCHAR(255),
	pid INTEGER,
	heartbeat_at DATETIME,
	log_path TEXT,
	placed_device VARCHAR(32),
	reason VARCHAR(32),
	name VARCHAR(200),
	notes TEXT,
	tags JSON,
	PRIMARY KEY (id)
);

CREATE INDEX ix_runs_status ON runs (status);

CREATE INDEX ix_runs_created_at ON runs (created_at);

CREATE TABLE scheduler_lease (
	name VARCHAR(32) NOT NULL,
	holder VARCHAR(64) NOT NULL,
	hostname VARCHAR(255) NOT NULL,
	pid INTEGER NOT NULL,
	acquired_at DATETIME NOT NULL,
	expires_at DATETIME NOT NULL,
	PRIMARY KEY (name)
);

CREATE TABLE metric_points (
	id INTEGER NOT NULL,
	run_id INTEGER NOT NULL,
	name VARCHAR(64) NOT NULL,
	step INTEGER NOT NULL,
	epoch INTEGER NOT NULL,
	wall_time FLOAT NOT NULL,
	value FLOAT,
	PRIMARY KEY (id),
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);

CREATE INDEX ix_metric_points_run_name_step ON metric_points (run_id, name, step);

CREATE TABLE system_samples (
	id INTEGER NOT NULL,
	run_id INTEGER NOT NULL,
	time FLOAT NOT NULL,
	source VARCHAR(32) NOT NULL,
	name VARCHAR(64) NOT NULL,
	value FLOAT NOT NULL,
	unit VARCHAR(16) NOT NULL,
	PRIMARY KEY (id),
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);

CREATE INDEX ix_system_samples_run_source_name_time ON system_samples (run_id, source, name, time);

CREATE TABLE tensor_stats (
	id INTEGER NOT NULL,
	run_id INTEGER NOT NULL,
	epoch INTEGER NOT NULL,
	step INTEGER NOT NULL,
	layer VARCHAR(128) NOT NULL,
	kind VARCHAR(8) NOT NULL,
	numel INTEGER NOT NULL,
	norm FLOAT,
	mean FLOAT,
	std FLOAT,
	min FLOAT,
	max FLOAT,
	histogram JSON,
	PRIMARY KEY (id),
	FOREIGN KEY(run_id) REFERENCES runs (id) ON DELETE CASCADE
);

CREATE INDEX ix_tensor_stats_run_epoch ON tensor_stats (run_id, epoch);
